"""The status read model: the latest status dict of every task, readable from any thread.

The journal publishes after each append; readers (TaskManager, CLI, HTTP) never touch the log or
the journal's thread. A published dict is never mutated afterwards, and readers get copies.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Mapping
from typing import Any

import structlog

log = structlog.get_logger("hospital_refresh.view")

Status = dict[str, Any]
Listener = Callable[[Status], None]


class StatusView:
    """Task statuses as of the last journaled event, plus listeners told of every change."""

    def __init__(self) -> None:
        self._statuses: dict[str, Status] = {}
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()

    def get(self, task_id: str) -> Status | None:
        """A copy of one task's status, or None."""
        status = self._statuses.get(task_id)
        return None if status is None else copy.deepcopy(status)

    def list(self, status: str | None = None) -> list[Status]:
        """Copies of every task's status (optionally only those in ``status``), oldest first."""
        current = list(self._statuses.values())
        return [copy.deepcopy(s) for s in current if status is None or s["status"] == status]

    def peek(self, task_id: str) -> Status | None:
        """The published dict itself, for internal readers that promise not to mutate it."""
        return self._statuses.get(task_id)

    def publish(self, changed: Mapping[str, Status | None]) -> None:
        """Swap in new statuses (None removes a task) and tell the listeners."""
        statuses = dict(self._statuses)
        for task_id, status in changed.items():
            if status is None:
                statuses.pop(task_id, None)
            else:
                statuses[task_id] = status
        self._statuses = statuses
        with self._lock:
            listeners = list(self._listeners)
        for status in changed.values():
            if status is None:
                continue
            for listener in listeners:
                try:
                    listener(status)
                except Exception as exc:
                    # A listener is the user's code: its bug must not stop the journal.
                    log.error(
                        "status listener failed",
                        listener=getattr(listener, "__qualname__", repr(listener)),
                        task_id=status.get("task_id"),
                        exc_info=exc,
                    )

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(status)`` on every change (on the journal's thread: keep it quick).

        An exception from the listener is logged at ERROR and otherwise ignored.

        Returns the function that unsubscribes it.
        """
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe
