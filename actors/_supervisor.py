"""The supervisor: the lifecycle of every task (create, start, cancel, cleanup, how it ends).

It validates requests, journals the lifecycle events, fetches the root of a full refresh itself
(the list of provinces) and hands provinces to the Province actor. It learns that a task has
nothing left outstanding from the journal, and then journals ``TaskSucceeded`` or ``TaskFailed``.

Every reply is sent only after the journal holds the event, so a caller who got a task id back
can rely on the log knowing that task.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime
from typing import Any, TypeVar

import pykka
import structlog

from events import (
    CANCELLED,
    FAILED,
    FINISHED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    TASK_TYPES,
    Event,
    Path,
    TaskCancelled,
    TaskCreated,
    TaskFailed,
    TaskResumed,
    TasksCleanedUp,
    TaskStarted,
    TaskSucceeded,
    now,
)
from llm import Divisions

from ._levels import journal_outcome
from ._messages import (
    Append,
    CancelTask,
    ClaimSettled,
    CleanupTasks,
    CreateTask,
    DropTask,
    Expand,
    Fetched,
    FetchFailed,
    FetchJob,
    ForgetTasks,
    Query,
    ResumeFrontier,
    ResumeTask,
    StartTask,
    Submit,
    TaskDrained,
)
from ._reply import answer, fail, stopped
from ._tell import safe_tell
from ._view import StatusView

log = structlog.get_logger("hospital_refresh.supervisor")

T = TypeVar("T")


def validate_request(task_type: object, target: object, divisions: Divisions) -> str | None:
    """Check a create request; return the target to journal (a known alias is normalised).

    Raises ValueError saying what was wrong and what is allowed. An unknown province is not an
    error here: the task is created and ends FAILED when started, naming the closest names.
    """
    if task_type not in TASK_TYPES:
        allowed = ", ".join(map(repr, TASK_TYPES))
        raise ValueError(f"unknown task_type {task_type!r}: allowed values are {allowed}")
    if task_type == "full":
        if target not in (None, ""):
            raise ValueError(f"a 'full' task takes no target, got {target!r}")
        return None
    if not isinstance(target, str) or not target.strip():
        raise ValueError(
            "a 'province' task needs a target: the province's name, e.g. '北京市' or '广东省'"
        )
    return divisions.resolve_province(target) or target.strip()


def unknown_province_error(target: str, divisions: Divisions) -> str:
    """The error a province task ends with when its target is not a province."""
    close = divisions.suggest_provinces(target)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown province {target!r}{hint}"


class Supervisor(pykka.ThreadingActor):
    """Owns the lifecycle of tasks; the only actor that creates, starts, cancels or ends them."""

    use_daemon_thread = True

    def __init__(
        self,
        journal: pykka.ActorRef[Any],
        dispatcher: pykka.ActorRef[Any],
        levels: tuple[pykka.ActorRef[Any], pykka.ActorRef[Any], pykka.ActorRef[Any]],
        view: StatusView,
        divisions: Divisions,
    ) -> None:
        super().__init__()
        self._journal = journal
        self._dispatcher = dispatcher
        self._levels = levels
        self._provinces = levels[0]
        self._view = view
        self._divisions = divisions
        self._claimed: dict[str, tuple[str, int]] = {}
        self._claims = itertools.count()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Fetched | FetchFailed):
            self._on_root(message)
        elif isinstance(message, TaskDrained):
            self._on_drained(message)
        elif isinstance(message, CreateTask):
            self._guard(message.reply, lambda: self._create(message))
        elif isinstance(message, StartTask):
            self._guard(message.reply, lambda: self._start(message))
        elif isinstance(message, CancelTask):
            self._guard(message.reply, lambda: self._cancel(message))
        elif isinstance(message, CleanupTasks):
            self._guard(message.reply, lambda: self._cleanup(message))
        elif isinstance(message, ResumeTask):
            self._guard(message.reply, lambda: self._resume(message))
        elif isinstance(message, ResumeFrontier):
            self._guard(message.reply, lambda: self._on_frontier(message))
        elif isinstance(message, ClaimSettled):
            self._settle(message)
        return None

    def _settle(self, message: ClaimSettled) -> None:
        claim = self._claimed.get(message.task_id)
        if claim is not None and claim[1] == message.token:  # not a newer claim
            del self._claimed[message.task_id]

    @staticmethod
    def _guard(reply: Future[Any], fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:
            if not reply.done():
                fail(reply, exc)

    def _journal_then(
        self, events: tuple[Event, ...], reply: Future[T], value: T, claim: str | None = None
    ) -> None:
        """Journal ``events``; answer ``reply`` with ``value`` once the log holds them.

        With ``claim``, the task (of the first event) is claimed as that status until the journal
        answers: by then the view shows the event, or the journal refused it.
        """
        task_id = events[0].task_id if claim is not None else ""
        token = next(self._claims)
        if claim is not None:
            self._claimed[task_id] = (claim, token)
        written: Future[Any] = Future()
        me = self.actor_ref

        def on_written(done: Future[Any]) -> None:
            if claim is not None:
                safe_tell(me, ClaimSettled(task_id, token))
            exc = done.exception()
            if exc is None:
                answer(reply, value)
            else:
                fail(reply, exc)

        written.add_done_callback(on_written)
        if not safe_tell(self._journal, Append(events, written)):
            stopped(reply)

    def _status(self, task_id: str) -> str | None:
        """The task's status, counting what this actor decided but the view may not show yet.

        A claim bridges the time between journaling a lifecycle event and the view showing it,
        so that two decisions in a row (a cancel right after the task drained, say) never both
        act.
        """
        claimed = self._claimed.get(task_id)
        if claimed is not None:
            return claimed[0]
        current = self._view.peek(task_id)
        return None if current is None else current["status"]

    def _create(self, msg: CreateTask) -> None:
        target = validate_request(msg.task_type, msg.target, self._divisions)
        task_id = uuid.uuid4().hex[:12]
        while self._view.peek(task_id) is not None:
            task_id = uuid.uuid4().hex[:12]
        log.info("task created", task_id=task_id, task_type=msg.task_type, target=target)
        event = TaskCreated(task_id=task_id, task_type=msg.task_type, target=target)
        self._journal_then((event,), msg.reply, task_id)

    def _start(self, msg: StartTask) -> None:
        task_id = msg.task_id
        current = self._view.peek(task_id)
        if current is None or self._status(task_id) != PENDING:
            log.info("task not started: not pending", task_id=task_id, status=self._status(task_id))
            answer(msg.reply, False)
            return
        started = TaskStarted(task_id=task_id)
        if current["task_type"] == "province":
            province = current["target"]
            if not self._known(province):
                error = unknown_province_error(province, self._divisions)
                log.error("task failed", task_id=task_id, error=error)
                failed = TaskFailed(task_id=task_id, error=error)
                self._journal_then((started, failed), msg.reply, True, claim=FAILED)
                return
            self._journal_then((started,), msg.reply, True, claim=RUNNING)
            log.info("task started", task_id=task_id, task_type="province", target=province)
            safe_tell(self._provinces, Expand(task_id, ((province,),)))
            return
        self._journal_then((started,), msg.reply, True, claim=RUNNING)
        log.info("task started", task_id=task_id, task_type="full")
        safe_tell(self._dispatcher, Submit((FetchJob(task_id, (), self.actor_ref),)))

    def _on_root(self, message: Fetched | FetchFailed) -> None:
        children = journal_outcome(self._journal, message)
        if children:
            paths = tuple((name,) for name in children)
            safe_tell(self._provinces, Expand(message.job.task_id, paths))

    def _on_drained(self, message: TaskDrained) -> None:
        task_id = message.task_id
        if self._status(task_id) != RUNNING:
            return
        if not message.failed:
            log.info("task succeeded", task_id=task_id)
            self._journal_then((TaskSucceeded(task_id=task_id),), Future(), None, SUCCEEDED)
            return
        paths: tuple[Path, ...] = tuple(path for path, _ in message.failed)
        first_path, first_error = message.failed[0]
        error = (
            f"{len(paths)} node(s) failed after retries; first: "
            f"{' / '.join(first_path) or '全国'}: {first_error}"
        )
        log.error("task failed", task_id=task_id, error=error, failed=len(paths))
        failed = TaskFailed(task_id=task_id, error=error, failed_paths=paths)
        self._journal_then((failed,), Future(), None, FAILED)

    def _cancel(self, msg: CancelTask) -> None:
        task_id = msg.task_id
        if self._status(task_id) not in (PENDING, RUNNING):
            answer(msg.reply, False)
            return
        safe_tell(self._dispatcher, DropTask(task_id))
        log.info("task cancelled", task_id=task_id)
        self._journal_then((TaskCancelled(task_id=task_id),), msg.reply, True, CANCELLED)

    def _resume(self, msg: ResumeTask) -> None:
        task_id = msg.task_id
        current = self._view.peek(task_id)
        status = self._status(task_id)
        reason = None
        if current is None:
            reason = "no such task"
        elif status == RUNNING and (task_id in self._claimed or not current["interrupted"]):
            reason = "it is running in this process"
        elif status not in (RUNNING, FAILED):
            reason = f"it is {status}; only interrupted or FAILED tasks can be resumed"
        elif current["task_type"] == "province" and not self._known(current["target"]):
            reason = f"its target {current['target']!r} is not a known province"
        if reason is not None:
            log.info("task not resumed", task_id=task_id, reason=reason)
            answer(msg.reply, False)
            return
        assert current is not None
        retry = tuple(tuple(p) for p in current["failed_paths"])
        log.info("task resumed", task_id=task_id, was=status, retrying=len(retry))
        resumed = TaskResumed(task_id=task_id, retry_paths=retry)
        self._journal_then((resumed,), Future(), None, claim=RUNNING)
        # The journal answers in order: the frontier it computes already counts the resume.
        frontier: Future[list[Path]] = Future()
        me = self.actor_ref

        def hand_over(done: Future[list[Path]]) -> None:
            exc = done.exception()
            if exc is not None:
                fail(msg.reply, exc)
            elif not safe_tell(me, ResumeFrontier(task_id, tuple(done.result()), msg.reply)):
                stopped(msg.reply)

        frontier.add_done_callback(hand_over)
        query = Query(lambda projection: projection.tasks[task_id].frontier(), frontier)
        if not safe_tell(self._journal, query):
            stopped(msg.reply)

    def _known(self, province: str) -> bool:
        return province in self._divisions.provinces()

    def _on_frontier(self, msg: ResumeFrontier) -> None:
        """Hand every node still to fetch to the actor of its level."""
        by_depth: dict[int, list[Path]] = {}
        for path in msg.paths:
            by_depth.setdefault(len(path), []).append(path)
        for depth, paths in sorted(by_depth.items()):
            if depth == 0:
                safe_tell(self._dispatcher, Submit((FetchJob(msg.task_id, (), self.actor_ref),)))
            else:
                safe_tell(self._levels[depth - 1], Expand(msg.task_id, tuple(paths)))
        log.info("frontier handed over", task_id=msg.task_id, nodes=len(msg.paths))
        answer(msg.reply, True)

    def _cleanup(self, msg: CleanupTasks) -> None:
        cutoff = now() - msg.hours * 3600
        old = tuple(
            s["task_id"]
            for s in self._view.list()
            if self._status(s["task_id"]) in FINISHED  # a claim (a resume, say) counts
            and s["finished_at"] is not None
            and datetime.fromisoformat(s["finished_at"]).timestamp() < cutoff
        )
        if not old:
            answer(msg.reply, 0)
            return
        for task_id in old:
            self._claimed.pop(task_id, None)
        log.info("tasks cleaned up", count=len(old), older_than_hours=msg.hours)
        event = TasksCleanedUp(task_ids=old, older_than_hours=msg.hours)
        safe_tell(self._dispatcher, ForgetTasks(old))  # before the reply can reach the caller
        self._journal_then((event,), msg.reply, len(old))
