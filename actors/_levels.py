"""The Province, City and District actors: each expands the nodes of its level.

One actor per level for the whole system, with the nodes as data in its messages, so live
threads stay bounded however large the tree (pykka gives every actor an OS thread). A level
actor asks the pool for a node's children, journals what comes back, and hands each child down
to the level below; a node that failed for good is journaled as failed and its siblings go on.

Each fetched list is checked against the GB/T 2260 reference data (``llm.check_names``) before
it is journaled: the event records every child's adcode, or "" for a name the data does not know,
which stays in the tree marked unverified (and is logged as a warning), never silently dropped.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import pykka
import structlog

from events import ChildrenFetched, NodeFailed
from llm import check_names, child_level, usage_of

from ._messages import Append, Expand, Fetched, FetchFailed, FetchJob, Submit
from ._tell import safe_tell

log = structlog.get_logger("hospital_refresh.levels")
_debug = logging.getLogger("hospital_refresh.levels")


def journal_outcome(
    journal: pykka.ActorRef[Any], message: Fetched | FetchFailed
) -> tuple[str, ...]:
    """Journal a call's outcome (``ChildrenFetched`` or ``NodeFailed``); return the children."""
    job = message.job
    if isinstance(message, Fetched):
        if _debug.isEnabledFor(logging.DEBUG):  # a dropped structlog line still costs ~13 us
            log.debug(
                "children fetched",
                task_id=job.task_id,
                path=" / ".join(job.path) or "全国",
                count=len(message.children),
                children=list(message.children),
            )
        adcodes = check_names(job.path, message.children)
        if "" in adcodes:
            log.warning(
                "names not in the GB/T 2260 reference data: kept, marked unverified",
                task_id=job.task_id,
                path=" / ".join(job.path) or "全国",
                names=[n for n, code in zip(message.children, adcodes, strict=True) if not code],
            )
        usage = usage_of(message)
        event: ChildrenFetched | NodeFailed = ChildrenFetched(
            task_id=job.task_id,
            level=child_level(job.path),
            path=job.path,
            children=message.children,
            adcodes=adcodes,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
        )
        children = message.children
    else:
        log.error(
            "node failed after retries",
            task_id=job.task_id,
            path=" / ".join(job.path) or "全国",
            error=message.error,
            exc_info=message.exc,
        )
        usage = usage_of(message.exc)
        event = NodeFailed(
            task_id=job.task_id,
            path=job.path,
            error=message.error,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
        )
        children = ()
    safe_tell(journal, Append((event,)))
    return children


class LevelActor(pykka.ThreadingActor):
    """Expands nodes of ``level``: fetch children, journal them, hand them to ``below``."""

    use_daemon_thread = True
    level: ClassVar[str] = ""

    def __init__(
        self,
        journal: pykka.ActorRef[Any],
        dispatcher: pykka.ActorRef[Any],
        below: pykka.ActorRef[Any] | None,
    ) -> None:
        super().__init__()
        self._journal = journal
        self._dispatcher = dispatcher
        self._below = below

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Expand):
            me = self.actor_ref
            jobs = tuple(FetchJob(message.task_id, path, me) for path in message.paths)
            safe_tell(self._dispatcher, Submit(jobs))
        elif isinstance(message, Fetched | FetchFailed):
            children = journal_outcome(self._journal, message)
            if self._below is not None and children:
                path = message.job.path
                paths = tuple((*path, name) for name in children)
                safe_tell(self._below, Expand(message.job.task_id, paths))
        return None


class ProvinceActor(LevelActor):
    """Expands a province into its cities."""

    level = "province"


class CityActor(LevelActor):
    """Expands a city into its districts."""

    level = "city"


class DistrictActor(LevelActor):
    """Expands a district into its hospitals (the leaves)."""

    level = "district"
