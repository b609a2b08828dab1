"""The facts of a refresh task, one frozen record class per fact.

Records are the domain events. They know nothing of how they are stored: the log wraps each one
in a :class:`Recorded` envelope that carries the global sequence number and the byte offset, the
way the eventsourcing library keeps its stored-event record apart from the domain event.

``at`` is a UTC timestamp in seconds since the epoch (a float), cheap to pack and to compare.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, ClassVar

Path = tuple[str, ...]
"""A node's identity: its names from the top, e.g. ``("吉林省", "长春市", "朝阳区")``."""

TASK_TYPES: tuple[str, ...] = ("full", "province")


def now() -> float:
    """The current UTC time as epoch seconds, the unit of every ``at``."""
    return time.time()


@functools.lru_cache(maxsize=4096)
def iso(ts: float | None) -> str | None:
    """Render an epoch timestamp as ISO-8601 UTC, or None (cached: status dicts render the same
    few timestamps over and over)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of every event: what happened to which task, and when."""

    TYPE: ClassVar[str] = "Event"
    VERSION: ClassVar[int] = 1

    task_id: str
    at: float = field(default_factory=now)


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskCreated(Event):
    """A refresh task was accepted (``target`` is the province for a province task)."""

    TYPE: ClassVar[str] = "TaskCreated"
    task_type: str
    target: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskStarted(Event):
    """The task began walking its tree."""

    TYPE: ClassVar[str] = "TaskStarted"


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildrenFetched(Event):
    """The data event: the list fetched for the node at ``path`` (``()`` is the country).

    ``adcodes`` holds, for each child, its GB/T 2260 code when the reference data knows it and
    ``""`` when it does not (the child is unverified); it is empty when the children were not
    checked (hospitals, or events written before the check existed). ``prompt_tokens`` and
    ``completion_tokens`` are what the LLM call cost, as the backend reported (0: not reported).
    """

    TYPE: ClassVar[str] = "ChildrenFetched"
    VERSION: ClassVar[int] = 2
    level: str
    path: Path
    children: tuple[str, ...]
    adcodes: tuple[str, ...] = ()
    prompt_tokens: int = 0
    completion_tokens: int = 0


def children_fetched_v1_to_v2(fields: dict[str, Any]) -> dict[str, Any]:
    """Version 1 had no reference check and no token counts: they read as unchecked and 0."""
    return {**fields, "adcodes": (), "prompt_tokens": 0, "completion_tokens": 0}


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchRetried(Event):
    """A call for ``path`` failed and will be tried again after ``delay_s``; the tokens are
    what the failed call cost (a malformed answer is paid for), 0 when nothing was answered."""

    TYPE: ClassVar[str] = "FetchRetried"
    VERSION: ClassVar[int] = 2
    path: Path
    attempt: int
    error: str
    delay_s: float
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeFailed(Event):
    """A node still failed after its retries; its siblings carry on. The tokens are what its
    last call cost, as in ``FetchRetried``."""

    TYPE: ClassVar[str] = "NodeFailed"
    VERSION: ClassVar[int] = 2
    path: Path
    error: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


def without_tokens_v1_to_v2(fields: dict[str, Any]) -> dict[str, Any]:
    """``FetchRetried`` and ``NodeFailed`` version 1 counted no tokens: they read as 0."""
    return {**fields, "prompt_tokens": 0, "completion_tokens": 0}


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgressChanged(Event):
    """The task's progress (0-100) or its current step moved on."""

    TYPE: ClassVar[str] = "ProgressChanged"
    progress: int
    current_step: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskSucceeded(Event):
    """Every node of the task was fetched."""

    TYPE: ClassVar[str] = "TaskSucceeded"


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskFailed(Event):
    """The task ended with failures; everything fetched is kept."""

    TYPE: ClassVar[str] = "TaskFailed"
    error: str
    failed_paths: tuple[Path, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskCancelled(Event):
    """The task was cancelled by a user; no further call is made for it."""

    TYPE: ClassVar[str] = "TaskCancelled"


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskResumed(Event):
    """An interrupted or failed task carries on from the frontier replay rebuilt;
    ``retry_paths`` are the failed nodes it will try again."""

    TYPE: ClassVar[str] = "TaskResumed"
    retry_paths: tuple[Path, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class TasksCleanedUp(Event):
    """Finished tasks were dropped from the projections; the log keeps their history.

    ``task_id`` is empty: this fact is about several tasks, named in ``task_ids``.
    """

    TYPE: ClassVar[str] = "TasksCleanedUp"
    task_id: str = ""
    task_ids: tuple[str, ...] = ()
    older_than_hours: float = 0.0


EVENT_TYPES: tuple[type[Event], ...] = (
    TaskCreated,
    TaskStarted,
    ChildrenFetched,
    FetchRetried,
    NodeFailed,
    ProgressChanged,
    TaskSucceeded,
    TaskFailed,
    TaskCancelled,
    TaskResumed,
    TasksCleanedUp,
)


@dataclass(frozen=True, slots=True)
class Recorded:
    """An event as the log holds it: its global sequence number and the offset of its frame."""

    seq: int
    offset: int
    event: Event

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly line of the audit trail: seq, offset, type, ISO time, then fields."""
        event = self.event
        out: dict[str, Any] = {
            "seq": self.seq,
            "offset": self.offset,
            "type": event.TYPE,
            "at": iso(event.at),
        }
        for f in fields(event):
            if f.name != "at":
                out[f.name] = _plain(getattr(event, f.name))
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value
