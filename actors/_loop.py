"""An asyncio loop on its own thread, where every LLM coroutine runs, and the asyncio bridge.

All calls share one loop so that a backend holding a pooled connection (an ``httpx`` client is
bound to the loop it was made on) works. The loop doubles as the timer wheel for retry backoff:
a call waiting to be retried is a ``call_later`` handle, not a thread or a pool slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """Runs an asyncio event loop in a daemon thread until :meth:`stop`."""

    def __init__(self, name: str = "llm-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Schedule ``coro`` on the loop; the returned future is safe to wait on from any thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call_later(self, delay: float, fn: Callable[[], Any]) -> None:
        """Call ``fn`` on the loop's thread after ``delay`` seconds (thread-safe)."""
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.call_later, delay, fn)

    def stop(self, closer: Callable[[], Awaitable[Any]] | None = None, timeout: float = 5) -> None:
        """Run ``closer()`` on the loop (e.g. a backend's ``aclose``), cancel what is left, stop."""
        if self.loop.is_closed():
            return
        if closer is not None:
            # a failing closer must not keep the process from stopping
            with contextlib.suppress(Exception):
                self.submit(_await(closer())).result(timeout)

        async def _cancel_rest() -> None:
            current = asyncio.current_task()
            rest = [t for t in asyncio.all_tasks() if t is not current]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.submit(_cancel_rest()).result(timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()


async def _await(aw: Awaitable[T]) -> T:
    return await aw


def bridge(future: Future[T]) -> asyncio.Future[T]:
    """Wrap a thread-side future for ``await`` without blocking the running event loop.

    pykka's own ``await future`` blocks the loop (it calls ``get()``); this resolves the asyncio
    future with ``call_soon_threadsafe`` instead, and does nothing if the loop has closed or the
    awaiting side was cancelled.
    """
    loop = asyncio.get_running_loop()
    result: asyncio.Future[T] = loop.create_future()

    def _settle(done: Future[T]) -> None:
        if result.cancelled():
            return
        if done.cancelled():
            result.cancel()
            return
        exc = done.exception()
        if exc is not None:
            result.set_exception(exc)
        else:
            result.set_result(done.result())

    def _on_done(done: Future[T]) -> None:
        if loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed since the check
            loop.call_soon_threadsafe(_settle, done)

    future.add_done_callback(_on_done)
    return result
