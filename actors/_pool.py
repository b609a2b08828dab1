"""The LLM fetch pool: exactly ``concurrency`` fetch actors, fed by a work-pulling dispatcher.

A fetch actor asks for work when it is idle, so a slow call never holds up a queue behind it
(work-pulling beat round-robin 3x on uneven call times here). The dispatcher is the only place
calls are queued, which is what makes the bound hold across every task in the process.

Fairness: each task has its own queue and the dispatcher serves tasks in turn, so a province
task started during a full refresh gets every other free slot at once. Within a task the deepest
node goes first, so leaves finish early and progress moves steadily instead of waiting for a
whole level to be discovered.

Retries: a failed call goes back to the dispatcher, which journals ``FetchRetried`` and arms a
timer on the LLM loop. While it waits, the call holds no slot; when the timer fires the call is
queued again. Everything is retried except ``PermanentLLMError`` and ``NotImplementedError``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import random
import threading
import types
from collections import deque
from dataclasses import replace
from typing import Any

import pykka
import structlog

from events import LEVELS, FetchRetried
from llm import LLMService, LLMTimeout, PermanentLLMError, usage_of

from ._loop import LoopThread
from ._messages import (
    Append,
    DropTask,
    Fetched,
    FetchFailed,
    FetchJob,
    ForgetTasks,
    PoolStats,
    Requeue,
    Submit,
    Work,
    WorkDone,
    WorkerReady,
)
from ._reply import answer
from ._retry import RetryPolicy
from ._tell import safe_tell

log = structlog.get_logger("hospital_refresh.pool")

DEPTHS = len(LEVELS)


def describe(exc: BaseException) -> str:
    """One line that says what went wrong: the type and the message."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def is_permanent(exc: BaseException) -> bool:
    """Whether asking again cannot help."""
    return isinstance(exc, PermanentLLMError | NotImplementedError)


class Dispatcher(pykka.ThreadingActor):
    """Queues calls per task, hands them to idle fetch actors, and schedules retries."""

    use_daemon_thread = True

    def __init__(
        self,
        journal: pykka.ActorRef[Any],
        loop: LoopThread,
        retry: RetryPolicy,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self._journal = journal
        self._loop = loop
        self._retry = retry
        self._rng = random.Random(seed)
        self._queues: dict[str, list[deque[FetchJob]]] = {}
        self._turns: deque[str] = deque()
        self._idle: list[pykka.ActorRef[Any]] = []
        self._dropped: set[str] = set()
        self._in_flight = 0
        self._peak_in_flight = 0
        self._waiting_retry = 0
        self._calls = 0
        self._retries = 0
        self._failures = 0
        self._calls_by_task: dict[str, int] = {}

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, WorkDone):
            self._in_flight -= 1
            self._idle.append(message.worker)
            self._on_done(message)
        elif isinstance(message, Submit):
            for job in message.jobs:
                self._enqueue(job)
        elif isinstance(message, Requeue):
            self._waiting_retry -= 1
            self._enqueue(message.job)
        elif isinstance(message, WorkerReady):
            self._idle.append(message.worker)
        elif isinstance(message, DropTask):
            self._dropped.add(message.task_id)
            self._queues.pop(message.task_id, None)
            if message.task_id in self._turns:
                self._turns.remove(message.task_id)
        elif isinstance(message, ForgetTasks):
            # Not _dropped: an answer still in flight must not bring a cancelled task back.
            for task_id in message.task_ids:
                self._calls_by_task.pop(task_id, None)
        elif isinstance(message, PoolStats):
            answer(message.reply, self._stats())
        self._dispatch()
        return None

    def _stats(self) -> dict[str, Any]:
        return {
            "workers_idle": len(self._idle),
            "in_flight": self._in_flight,
            "peak_in_flight": self._peak_in_flight,
            "queued": sum(len(q) for qs in self._queues.values() for q in qs),
            "waiting_retry": self._waiting_retry,
            "calls": self._calls,
            "retries": self._retries,
            "failures": self._failures,
            "calls_by_task": dict(self._calls_by_task),
        }

    def _enqueue(self, job: FetchJob, front: bool = False) -> None:
        if job.task_id in self._dropped:
            return
        queues = self._queues.get(job.task_id)
        if queues is None:
            queues = self._queues[job.task_id] = [deque() for _ in range(DEPTHS)]
            self._turns.append(job.task_id)
        queue = queues[min(len(job.path), DEPTHS - 1)]
        if front:
            queue.appendleft(job)
        else:
            queue.append(job)

    def _next_job(self) -> FetchJob | None:
        while self._turns:
            task_id = self._turns.popleft()
            queues = self._queues[task_id]
            for queue in reversed(queues):
                if queue:
                    job = queue.popleft()
                    if any(queues):
                        self._turns.append(task_id)
                    else:
                        del self._queues[task_id]
                    return job
            del self._queues[task_id]
        return None

    def _dispatch(self) -> None:
        while self._idle:
            job = self._next_job()
            if job is None:
                return
            worker = self._idle.pop()
            if not safe_tell(worker, Work(job)):
                # That worker has stopped: the job waits, first in its queue, for another.
                self._enqueue(job, front=True)
                continue
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)
            self._calls += 1
            self._calls_by_task[job.task_id] = self._calls_by_task.get(job.task_id, 0) + 1

    def _on_done(self, done: WorkDone) -> None:
        job = done.job
        if job.task_id in self._dropped:
            # Cancelled while this call was in flight: its answer is not journaled either, so a
            # CANCELLED task's status and tree stay as they were when it was cancelled.
            return
        if done.exc is None and done.children is not None:
            safe_tell(job.reply_to, Fetched(job, done.children, done.usage))
            return
        exc = done.exc or RuntimeError("fetch returned nothing")
        error = describe(exc)
        usage = usage_of(exc)
        if is_permanent(exc) or job.attempt >= self._retry.max_retries:
            self._failures += 1
            safe_tell(job.reply_to, FetchFailed(job, error, exc))
            return
        delay = self._retry.delay(job.attempt, self._rng)
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(retry_after, int | float) and retry_after > delay:
            delay = float(retry_after)
        self._retries += 1
        self._waiting_retry += 1
        attempt = job.attempt + 1
        log.warning(
            "LLM call failed, retrying",
            task_id=job.task_id,
            path=" / ".join(job.path) or "全国",
            attempt=attempt,
            max_retries=self._retry.max_retries,
            delay_s=round(delay, 3),
            error=error,
        )
        safe_tell(
            self._journal,
            Append(
                (
                    FetchRetried(
                        task_id=job.task_id,
                        path=job.path,
                        attempt=attempt,
                        error=error,
                        delay_s=delay,
                        prompt_tokens=usage.prompt_tokens,
                        completion_tokens=usage.completion_tokens,
                    ),
                )
            ),
        )
        again = Requeue(replace(job, attempt=attempt))
        self._loop.call_later(delay, lambda: safe_tell(self.actor_ref, again))


class FetchActor(pykka.ThreadingActor):
    """Makes one LLM call at a time; its thread is its pool slot.

    Calls run on the shared LLM loop, or, for a service that allows it
    (``LLMService.any_event_loop``), on this actor's own loop, which saves two thread hops.
    """

    use_daemon_thread = True

    def __init__(
        self,
        dispatcher: pykka.ActorRef[Any],
        service: LLMService,
        loop: LoopThread,
        call_timeout: float,
        own_loops: OwnLoops,
    ) -> None:
        super().__init__()
        self._dispatcher = dispatcher
        self._service = service
        self._shared = loop
        self._timeout = call_timeout
        self._own_loops = own_loops
        self._own: asyncio.AbstractEventLoop | None = None
        self._eager = False

    def on_start(self) -> None:
        self._eager = bool(getattr(self._service, "eager_start", False))
        if getattr(self._service, "any_event_loop", False):
            self._own = asyncio.new_event_loop()
            self._own_loops.add(self._own)
        safe_tell(self._dispatcher, WorkerReady(self.actor_ref))

    def on_stop(self) -> None:
        if self._own is not None:
            self._own_loops.discard(self._own)
            self._own.close()

    def on_failure(self, *exc_info: Any) -> None:
        self.on_stop()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Work):
            names, exc = self._call(message.job)
            children = None if names is None else tuple(names)
            done = WorkDone(self.actor_ref, message.job, children, exc, usage_of(names))
            safe_tell(self._dispatcher, done)
        return None

    def _call(self, job: FetchJob) -> tuple[list[str] | None, BaseException | None]:
        """The call's names (a ``Names`` list carrying its token usage), or the error."""
        try:
            if self._own is not None:
                names = self._run_own(job.path)
            else:
                coro = _fetch(self._service, job.path, self._timeout)
                try:
                    names = self._shared.submit(coro).result()
                finally:
                    coro.close()
        except TimeoutError:
            return None, LLMTimeout(f"no answer within {self._timeout:g} s")
        except (concurrent.futures.CancelledError, asyncio.CancelledError):
            return None, RuntimeError("call cancelled: the actor system is stopping")
        except Exception as exc:
            return None, exc
        return names, None

    def _run_own(self, path: tuple[str, ...]) -> list[str]:
        """Run one call on this actor's loop, cancelling it after ``call_timeout``.

        A bare timer handle costs a third of ``asyncio.timeout`` here, which matters at
        thousands of calls per second.
        """
        loop = self._own
        assert loop is not None
        coro = self._service.fetch_children(path)
        if self._eager:
            # Python 3.12's eager tasks, by hand: take the first step at once, and only if the
            # coroutine suspends hand it to a task on the loop. A call that completes without
            # suspending then costs ~2 us instead of a loop run (~40 us).
            asyncio._set_running_loop(loop)
            try:
                first = coro.send(None)
            except StopIteration as done:
                return done.value
            except BaseException:
                coro.close()
                raise
            finally:
                asyncio._set_running_loop(None)
            task = loop.create_task(_carry_on(coro, first))
        else:
            task = loop.create_task(coro)
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            task.cancel()

        timer = loop.call_later(self._timeout, expire)
        try:
            return loop.run_until_complete(task)
        except asyncio.CancelledError:
            if expired:
                raise TimeoutError from None
            raise
        finally:
            timer.cancel()


class OwnLoops:
    """The fetch actors' own loops, so that stopping the system can cancel calls in flight."""

    def __init__(self) -> None:
        self._loops: set[asyncio.AbstractEventLoop] = set()
        self._lock = threading.Lock()

    def add(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            self._loops.add(loop)

    def discard(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            self._loops.discard(loop)

    def cancel_all(self) -> None:
        """Cancel whatever call each loop is running (thread-safe)."""
        with self._lock:
            loops = list(self._loops)
        for loop in loops:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_cancel_tasks, loop)


def _cancel_tasks(loop: asyncio.AbstractEventLoop) -> None:
    for task in asyncio.all_tasks(loop):
        task.cancel()


async def _fetch(service: LLMService, path: tuple[str, ...], timeout: float) -> list[str]:
    async with asyncio.timeout(timeout):
        return await service.fetch_children(path)


@types.coroutine
def _carry_on(coro: Any, yielded: Any) -> Any:
    """Drive a coroutine already stepped once, as if it had run in the task from the start."""
    while True:
        try:
            sent = yield yielded
        except BaseException as exc:
            try:
                yielded = coro.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as done:
                return done.value
