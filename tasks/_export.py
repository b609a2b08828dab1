"""Export a task's fetched tree: CSV rows (province, city, district, hospital) or nested JSON."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

from events import TaskState
from llm import Divisions

CSV_COLUMNS = ("province", "city", "district", "hospital")


def hospital_rows(state: TaskState) -> Iterator[tuple[str, str, str, str]]:
    """One row per hospital, in the order the tree was fetched."""
    children = state.children

    def walk(path: tuple[str, ...]) -> Iterator[tuple[str, str, str, str]]:
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
    """Nested JSON: provinces > cities > districts > hospitals, with adcodes where known."""
    divisions = divisions or Divisions.load()
    keys = ("provinces", "cities", "districts", "hospitals")

    def node(path: tuple[str, ...]) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": path[-1], "adcode": divisions.adcode(path)}
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
        "provinces": provinces,
    }
