"""The journal: the one writer of the event log, and the keeper of the projections.

Every event goes to the log first and into the projections second; only then is the status view
published and the sender answered, so nothing is ever shown or acknowledged that the log does
not hold. After each append the journal derives what follows from the new state: a higher
progress becomes a ``ProgressChanged`` event, and a running task with nothing left outstanding
is reported to the supervisor, which decides how it ends.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pykka
import structlog

from events import (
    RUNNING,
    ChildrenFetched,
    Event,
    FetchRetried,
    NodeFailed,
    ProgressChanged,
    TaskResumed,
    TasksCleanedUp,
    TaskStarted,
)
from store import EventStore

from ._messages import Append, AttachSupervisor, Query, TaskDrained
from ._reply import answer, fail
from ._tell import safe_tell
from ._view import StatusView

log = structlog.get_logger("hospital_refresh.journal")

DATA_EVENTS = (ChildrenFetched, FetchRetried, NodeFailed)
"""Events that change a task's data but not its lifecycle or progress."""


class Journal(pykka.ThreadingActor):
    """Owns the :class:`EventStore`; serialises every append and every projection query."""

    use_daemon_thread = True

    def __init__(self, store: EventStore, view: StatusView) -> None:
        super().__init__()
        self._store = store
        self._view = view
        self._supervisor: pykka.ActorRef[Any] | None = None
        self._drained: set[str] = set()
        self._dirty: dict[str, None] = {}

    def on_start(self) -> None:
        projection = self._store.projection
        for state in projection.tasks.values():
            # Running in the log but not in this process: the last writer stopped mid-task.
            state.interrupted = state.status == RUNNING
        self._view.publish({tid: s.to_status() for tid, s in projection.tasks.items()})

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Append):
            self._on_append(message)
        elif isinstance(message, Query):
            try:
                answer(message.reply, message.fn(self._store.projection))
            except Exception as exc:
                fail(message.reply, exc)
        elif isinstance(message, AttachSupervisor):
            self._supervisor = message.supervisor
        return None

    def _on_append(self, message: Append) -> None:
        try:
            recorded = self._append(message.events, urgent=message.reply is not None)
        except Exception as exc:
            log.error("journal append failed", error=str(exc), exc_info=exc)
            if message.reply is not None:
                fail(message.reply, exc)
            return
        if message.reply is not None:
            answer(message.reply, recorded)

    def _append(self, events: Iterable[Event], urgent: bool = True) -> list[Any]:
        store = self._store
        recorded = store.append(self._without_late_answers(events))
        touched = self._dirty
        for rec in recorded:
            event = rec.event
            if not isinstance(event, DATA_EVENTS):
                urgent = True
            if isinstance(event, TasksCleanedUp):
                touched.update(dict.fromkeys(event.task_ids))
                self._drained.difference_update(event.task_ids)
            elif event.task_id:
                touched[event.task_id] = None
                if isinstance(event, TaskStarted | TaskResumed):
                    self._drained.discard(event.task_id)
        derived: list[Event] = []
        drained: list[TaskDrained] = []
        tasks = store.projection.tasks
        for task_id in touched:
            state = tasks.get(task_id)
            if state is None or state.status != RUNNING:
                continue
            progress = state.computed_progress()
            if progress > state.progress:
                derived.append(
                    ProgressChanged(
                        task_id=task_id, progress=progress, current_step=state.current_step
                    )
                )
            if not state.pending and task_id not in self._drained:
                self._drained.add(task_id)
                drained.append(TaskDrained(task_id, tuple(state.failed.items())))
        try:
            if derived:
                recorded += store.append(derived)
            if urgent or derived or drained or self.actor_inbox.empty():
                self._publish()
        finally:
            # Sent even if the above failed: a drained task the supervisor never hears of
            # would stay RUNNING for good.
            for notice in drained:
                safe_tell(self._supervisor, notice)
        return recorded

    def _without_late_answers(self, events: Iterable[Event]) -> Iterable[Event]:
        """Leave out data events of tasks that have ended (or were cleaned up).

        A call's answer can be on its way through a level actor while the task is cancelled:
        journaled, it would change a CANCELLED task's tree after the fact. Replay ignores such
        events too, for logs written before this rule.
        """
        tasks = self._store.projection.tasks
        kept: list[Event] = []
        for event in events:
            if isinstance(event, DATA_EVENTS):
                state = tasks.get(event.task_id)
                if state is None or state.finished:
                    log.debug(
                        "answer after the task ended: not journaled",
                        task_id=event.task_id,
                        status=None if state is None else state.status,
                        kind=type(event).__name__,
                    )
                    continue
            kept.append(event)
        return kept

    def _publish(self) -> None:
        """Publish the statuses of the tasks changed since the last publication.

        Under load, data events (a fetched list, a retry) are folded in at once but published
        with the next lifecycle or progress event, or as soon as the inbox is empty: rendering a
        status per event would cost a sixth of the journal's time, and nobody reads that fast.
        """
        tasks = self._store.projection.tasks
        self._view.publish(
            {tid: (s.to_status() if (s := tasks.get(tid)) else None) for tid in self._dirty}
        )
        self._dirty.clear()

    def on_stop(self) -> None:
        self._publish()
        self._store.close()

    def on_failure(self, *exc_info: Any) -> None:
        self._store.close()
