"""The messages actors exchange. Plain frozen records: actors talk by ``tell``, never by blocking.

Replies travel in a ``concurrent.futures.Future`` carried by the request, so a caller on any
thread (or on an asyncio loop, through :func:`actors.bridge`) waits without blocking an actor.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pykka

from events import Event, Path
from llm import Usage


@dataclass(frozen=True, slots=True)
class FetchJob:
    """One LLM call to make: the children of ``path`` for ``task_id``; ``attempt`` counts from 0."""

    task_id: str
    path: Path
    reply_to: pykka.ActorRef[Any] = field(compare=False, repr=False)
    attempt: int = 0


# --- journal -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Append:
    """Journal these events, in order; ``reply`` gets the recorded envelopes (or the error)."""

    events: tuple[Event, ...]
    reply: Future[Any] | None = None


@dataclass(frozen=True, slots=True)
class Query:
    """Run ``fn(projection)`` on the journal's thread and reply with its result."""

    fn: Any
    reply: Future[Any]


# --- supervisor --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateTask:
    task_type: str
    target: str | None
    reply: Future[str]


@dataclass(frozen=True, slots=True)
class StartTask:
    task_id: str
    reply: Future[bool]


@dataclass(frozen=True, slots=True)
class CancelTask:
    task_id: str
    reply: Future[bool]


@dataclass(frozen=True, slots=True)
class ResumeTask:
    task_id: str
    reply: Future[bool]


@dataclass(frozen=True, slots=True)
class ResumeFrontier:
    """The journal's answer to a resume: the nodes the task still has to fetch."""

    task_id: str
    paths: tuple[Path, ...]
    reply: Future[bool]


@dataclass(frozen=True, slots=True)
class CleanupTasks:
    hours: float
    reply: Future[int]


@dataclass(frozen=True, slots=True)
class ClaimSettled:
    """The journal answered for a lifecycle event: the view shows it now (or it was refused),
    so the supervisor's claim ``token`` on the task can go (unless a newer claim replaced it)."""

    task_id: str
    token: int


@dataclass(frozen=True, slots=True)
class TaskDrained:
    """The journal saw a running task's last outstanding node resolve; ``failed`` lists
    ``(path, error)`` of the nodes that failed for good."""

    task_id: str
    failed: tuple[tuple[Path, str], ...] = ()


# --- levels and the pool -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Expand:
    """Fetch the children of the nodes at ``paths`` (siblings travel together) and hand them
    down."""

    task_id: str
    paths: tuple[Path, ...]


@dataclass(frozen=True, slots=True)
class Fetched:
    """A call succeeded: the validated children of ``job.path``, and what the call cost."""

    job: FetchJob
    children: tuple[str, ...]
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class FetchFailed:
    """A call failed for good (retries spent, or a permanent error)."""

    job: FetchJob
    error: str
    exc: BaseException | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Submit:
    """Queue calls at the dispatcher."""

    jobs: tuple[FetchJob, ...]


@dataclass(frozen=True, slots=True)
class Requeue:
    """A retry's backoff is over: queue the call again."""

    job: FetchJob


@dataclass(frozen=True, slots=True)
class WorkerReady:
    """A fetch actor is idle and pulls the next call."""

    worker: pykka.ActorRef[Any]


@dataclass(frozen=True, slots=True)
class Work:
    """Make this call now (dispatcher to fetch actor)."""

    job: FetchJob


@dataclass(frozen=True, slots=True)
class WorkDone:
    """A fetch actor finished a call: ``children`` (and the ``usage`` the backend reported) on
    success, else ``exc``."""

    worker: pykka.ActorRef[Any]
    job: FetchJob
    children: tuple[str, ...] | None
    exc: BaseException | None
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class DropTask:
    """Forget the queued calls of a task and make no further call for it."""

    task_id: str


@dataclass(frozen=True, slots=True)
class ForgetTasks:
    """These tasks were cleaned up: drop the pool's counters of them."""

    task_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PoolStats:
    reply: Future[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class AttachSupervisor:
    """Tell the journal whom to notify when a task drains."""

    supervisor: pykka.ActorRef[Any]
