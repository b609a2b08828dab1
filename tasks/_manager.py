"""TaskManager: the guide's API over the actor system.

Quick start (the guide's example runs as written)::

    import asyncio
    from tasks import TaskManager

    async def main():
        manager = TaskManager()
        task_id = await manager.create_refresh_task("full")
        await manager.start_task(task_id)
        while True:
            status = manager.get_task_status(task_id)
            print(f"进度: {status['progress']}% - {status['current_step']}")
            if status["status"] in ["SUCCEEDED", "FAILED"]:
                break
            await asyncio.sleep(1)

    asyncio.run(main())

Methods that change something (create, start, cancel, cleanup) are coroutines and return once
the event log holds the change; they never block the event loop. Reads (status, list) are plain
methods answered from the in-memory projection, never from the log.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from actors import (
    ActorSystem,
    CancelTask,
    CleanupTasks,
    CreateTask,
    ResumeTask,
    StartTask,
    bridge,
)
from events import FINISHED, STATUSES
from llm import LLMService

from ._config import Settings, load_settings
from ._progress import ProgressCallback, ProgressTracker

Status = dict[str, Any]

_open_managers: set[TaskManager] = set()
"""Managers not closed yet: strongly held, so that a script that drops its manager without
closing it (the guide's quick start does) still gets it closed at exit."""


@atexit.register
def _close_forgotten_managers() -> None:
    """A script that never calls ``close()`` still ends with its log flushed and snapshotted."""
    for manager in list(_open_managers):
        manager.close()


class TaskManager:
    """Creates, runs and reports refresh tasks; one manager per event log.

    ``log_path`` defaults to ``$HOSPITAL_REFRESH_LOG`` or
    ``~/.local/share/hospital-refresh/events.hrlog``; ``llm_service`` to the backend the
    settings name (the simulated one unless ``llm``/``llm_provider``/``llm_base_url`` say
    otherwise, e.g. ``HOSPITAL_REFRESH_LLM_PROVIDER=deepseek``).
    Without ``settings``, the rest is read as the command line reads it (``tasks.load_settings``:
    the TOML file, then ``HOSPITAL_REFRESH_*`` variables such as
    ``HOSPITAL_REFRESH_SIM_LATENCY_MS=0-2``); the arguments given here win. Opening an existing
    log restores every task's status by replay. Close it with :meth:`close`, ``async with`` or
    ``with``.
    """

    def __init__(
        self,
        log_path: str | os.PathLike[str] | None = None,
        llm_service: LLMService | None = None,
        *,
        concurrency: int | None = None,
        max_retries: int | None = None,
        backoff_base: float | None = None,
        backoff_cap: float | None = None,
        backoff_jitter: float | None = None,
        call_timeout: float | None = None,
        fsync: str | None = None,
        settings: Settings | None = None,
    ) -> None:
        # Without explicit settings, read them as the command line does (TOML file, then
        # HOSPITAL_REFRESH_* variables); the arguments given here win, as flags do.
        settings = (settings if settings is not None else load_settings()).replace(
            log_path=os.fspath(log_path) if log_path is not None else None,
            concurrency=concurrency,
            max_retries=max_retries,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            backoff_jitter=backoff_jitter,
            call_timeout=call_timeout,
            fsync=fsync,
        )
        self.settings = settings
        self.llm_service = llm_service or settings.llm_service()
        self._system = ActorSystem(settings.log_path, self.llm_service, settings.system_config())
        self._closed = False
        _open_managers.add(self)

    # --- the guide's API ---------------------------------------------------------------------

    async def create_refresh_task(self, task_type: str, target: str | None = None) -> str:
        """Create a task (``"full"``, or ``"province"`` with the province as ``target``).

        Raises ValueError for an unknown ``task_type`` or a province task without a target.
        A province the reference data does not know is accepted here; the task then ends
        FAILED when started, with the closest names suggested. ``"北京"`` becomes ``"北京市"``.
        """
        return await self._ask(self._system.supervisor, lambda r: CreateTask(task_type, target, r))

    async def start_task(self, task_id: str) -> bool:
        """Start a PENDING task; False if it is unknown or not PENDING."""
        return await self._ask(self._system.supervisor, lambda r: StartTask(task_id, r))

    def get_task_status(self, task_id: str) -> Status | None:
        """The task's status dict, or None for an unknown id."""
        return self._system.view.get(task_id)

    def list_tasks(self, status: str | None = None) -> list[Status]:
        """Every task's status dict, oldest first; only those in ``status`` if given."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown status {status!r}: allowed values are {', '.join(STATUSES)}")
        return self._system.view.list(status)

    async def cancel_task(self, task_id: str) -> bool:
        """Cancel a PENDING or RUNNING task; queued calls are dropped. False otherwise."""
        return await self._ask(self._system.supervisor, lambda r: CancelTask(task_id, r))

    async def cleanup_old_tasks(self, hours: float) -> int:
        """Forget finished tasks that ended more than ``hours`` ago; returns how many.

        They leave the projections (status, list) but the log keeps their whole history.
        """
        if isinstance(hours, bool) or not isinstance(hours, int | float) or not hours >= 0:
            raise ValueError(f"hours must be a number >= 0, got {hours!r}")
        return await self._ask(self._system.supervisor, lambda r: CleanupTasks(float(hours), r))

    # --- beyond the guide --------------------------------------------------------------------

    async def resume_task(self, task_id: str) -> bool:
        """Carry on an interrupted task (RUNNING in the log, but its process died) or a FAILED
        one (only its failed nodes are tried again) from the frontier that replay rebuilt.

        Nodes whose children were journaled are never fetched again; a node that was in flight
        when the process died is fetched again (at-least-once per node). False, with the
        reason logged, for an unknown, PENDING, SUCCEEDED, CANCELLED or live task.
        """
        return await self._ask(self._system.supervisor, lambda r: ResumeTask(task_id, r))

    def interrupted_tasks(self) -> list[str]:
        """Ids of the tasks that were RUNNING when the log's last writer stopped."""
        return [s["task_id"] for s in self._system.view.list("RUNNING") if s["interrupted"]]

    async def resume_interrupted(self) -> list[str]:
        """Resume every interrupted task (call it at start-up); the ids that were resumed."""
        resumed = []
        for task_id in self.interrupted_tasks():
            if await self.resume_task(task_id):
                resumed.append(task_id)
        return resumed

    def add_progress_callback(self, task_id: str, callback: ProgressCallback) -> Callable[[], None]:
        """Call ``callback(progress, current_step)`` whenever the task's progress or step changes.

        Registered from a coroutine, the callback runs on that event loop; otherwise on the
        journal's thread (keep it quick). Returns a function that unregisters it.
        """
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        last: list[tuple[int, str] | None] = [None]

        def deliver(progress: int, step: str) -> None:
            callback(progress, step)

        def listener(status: Status) -> None:
            if status["task_id"] != task_id:
                return
            seen = (status["progress"], status["current_step"])
            if seen == last[0]:
                return
            last[0] = seen
            if loop is None:
                deliver(*seen)
            elif not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # the loop closed since the check
                    loop.call_soon_threadsafe(deliver, *seen)

        return self._system.view.subscribe(listener)

    def track(self, task_id: str, tracker: ProgressTracker) -> Callable[[], None]:
        """Drive the guide's ``ProgressTracker`` from a task's progress (0-100 mapped onto
        ``tracker.total_steps``). Returns a function that stops it."""
        return self.add_progress_callback(
            task_id,
            lambda progress, step: tracker.update(progress * tracker.total_steps / 100, step),
        )

    async def wait_for_task(self, task_id: str, timeout: float | None = None) -> Status:
        """Wait until the task has finished (SUCCEEDED, FAILED or CANCELLED); its status.

        Raises KeyError for an unknown id and TimeoutError after ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[Status] = loop.create_future()

        def settle(status: Status) -> None:
            if not finished.done():
                finished.set_result(status)

        def listener(status: Status) -> None:
            if status["task_id"] == task_id and status["status"] in FINISHED:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(settle, status)

        unsubscribe = self._system.view.subscribe(listener)
        try:
            current = self.get_task_status(task_id)
            if current is None:
                raise KeyError(f"unknown task id {task_id!r}")
            if current["status"] in FINISHED:
                return current
            return await asyncio.wait_for(finished, timeout)
        finally:
            unsubscribe()

    async def get_task_tree(self, task_id: str) -> dict[str, Any] | None:
        """The fetched hierarchy of a task (nested dicts), its frontier and its failed nodes."""
        return await bridge(self._system.query(lambda projection: projection.tree(task_id)))

    async def pool_stats(self) -> dict[str, Any]:
        """The fetch pool's counters: calls, retries, failures, in flight, peak in flight."""
        return await bridge(self._system.pool_stats())

    @property
    def log_path(self) -> str:
        """The event log this manager writes."""
        return self._system.store.path

    @property
    def system(self) -> ActorSystem:
        """The running actor system (for embedding and introspection)."""
        return self._system

    async def _ask(self, ref: Any, make: Callable[[Future[Any]], Any]) -> Any:
        if self._closed:
            raise RuntimeError("this TaskManager is closed")
        return await bridge(self._system.request(ref, make))

    # --- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every actor, flush and snapshot the log. Running tasks stay RUNNING in the log
        and can be resumed later. Idempotent.

        Each actor gets 10 s to stop; a journal still writing after that finishes on its own
        thread (see ``ActorSystem.stop``), and requests still unanswered fail.
        """
        if self._closed:
            return
        self._closed = True
        _open_managers.discard(self)
        self._system.stop()

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop."""
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    async def __aenter__(self) -> TaskManager:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __enter__(self) -> TaskManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<TaskManager {self.log_path!r} {state}>"
