"""Export a task's fetched tree: CSV rows (province, city, district, hospital) or nested JSON.

Every division carries its GB/T 2260 adcode and whether it is verified: matched against the
reference data when it was fetched (``ChildrenFetched.adcodes``), or, for a root the user named
or an event older than the check, found in the data by its exact path. A name an LLM invented
is exported all the same, with ``verified`` false, so that it can be seen and judged.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

from events import TaskState
from llm import Divisions

CSV_COLUMNS = ("province", "city", "district", "hospital")
"""Exactly these columns, one row per hospital, so that a spreadsheet or loader written for
them keeps working; adcodes and the verified marks are in the JSON export."""


def node_adcode(
    state: TaskState, path: tuple[str, ...], divisions: Divisions | None = None
) -> str | None:
    """The adcode of the division at ``path``: as matched when fetched, else by exact path."""
    if path in state.unverified:
        return None
    return state.adcodes.get(path) or (divisions or Divisions.load()).adcode(path)


def is_verified(
    state: TaskState, path: tuple[str, ...], divisions: Divisions | None = None
) -> bool:
    """Whether the division at ``path`` and every division above it are verified."""
    divisions = divisions or Divisions.load()
    return all(node_adcode(state, path[:n], divisions) for n in range(1, len(path) + 1))


def hospital_rows(state: TaskState) -> Iterator[tuple[str, ...]]:
    """One row per hospital (``CSV_COLUMNS``), in the order the tree was fetched."""
    children = state.children

    def walk(path: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
        names = children.get(path, ())
        if len(path) == 3:
            for hospital in names:
                yield (path[0], path[1], path[2], hospital)
            return
        for name in names:
            yield from walk((*path, name))

    yield from walk(state.root)


def to_csv(state: TaskState) -> str:
    """The CSV text with the header ``province,city,district,hospital``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(hospital_rows(state))
    return out.getvalue()


def to_nested(state: TaskState, divisions: Divisions | None = None) -> dict[str, Any]:
    """Nested JSON: provinces > cities > districts > hospitals; every division with its adcode
    (None when unknown) and ``verified``; the share verified per level at the top."""
    divisions = divisions or Divisions.load()
    keys = ("provinces", "cities", "districts", "hospitals")

    def node(path: tuple[str, ...]) -> dict[str, Any]:
        code = node_adcode(state, path, divisions)
        entry: dict[str, Any] = {"name": path[-1], "adcode": code, "verified": code is not None}
        names = state.children.get(path)
        key = keys[len(path)]
        if names is None:
            entry[key] = None
            entry["fetched"] = False
            if path in state.failed:
                entry["error"] = state.failed[path]
        elif len(path) == 3:
            entry[key] = list(names)
        else:
            entry[key] = [node((*path, name)) for name in names]
        return entry

    root = state.root
    tops = [root] if root else [(name,) for name in state.children.get((), ())]
    provinces = [node(path) for path in tops]
    return {
        "task_id": state.task_id,
        "task_type": state.task_type,
        "target": state.target,
        "status": state.status,
        "verified": state.verification(),
        "provinces": provinces,
    }
