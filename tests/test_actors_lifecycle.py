"""Lifecycle of tasks and of the actor system: cancel, close, and the asyncio face.

The LLM is a recording fake that can hold calls open, so a test can catch a task in the middle
of its run without relying on timing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pykka
import pytest
from conftest import ManagerFactory
from fakes import FakeLLMService, make_tree

from tasks import TaskManager

CANCEL_BOUND_S = 1.0
"""The issue's bound: a cancelled task is CANCELLED within this many seconds."""


async def wait_until(predicate: Any, what: str, timeout: float = 10.0) -> None:
    """Poll ``predicate()`` on the event loop until it is true (fail after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.002)


async def started_task(manager: TaskManager, province: str) -> str:
    """Create and start a province task; its id."""
    task_id = await manager.create_refresh_task("province", province)
    assert await manager.start_task(task_id)
    return task_id


# --- cancel --------------------------------------------------------------------------------------


def test_cancel_running_task_stops_it_within_a_second_and_makes_no_further_call(
    open_manager: ManagerFactory,
) -> None:
    """A RUNNING task is CANCELLED within 1 s of ``cancel_task``; its queued calls are dropped,
    the calls it had in flight bring nothing further, and its status no longer changes."""
    tree = make_tree(["北京市", "上海市"], cities=8, districts=2)
    beijing = ("北京市",)
    # Hold every city-level call of 北京市: the 5 slots fill with them, 3 more stay queued.
    service = FakeLLMService(tree, hold=lambda path: len(path) == 2 and path[:1] == beijing)

    async def body() -> None:
        async with open_manager(service) as manager:
            task_id = await started_task(manager, "北京市")
            await wait_until(lambda: service.held() == 5, "5 calls are held in flight")
            assert manager.get_task_status(task_id)["status"] == "RUNNING"

            asked = time.monotonic()
            assert await manager.cancel_task(task_id) is True
            while manager.get_task_status(task_id)["status"] != "CANCELLED":
                assert time.monotonic() - asked < CANCEL_BOUND_S, "not CANCELLED within 1 s"
                await asyncio.sleep(0.005)
            cancelled = manager.get_task_status(task_id)

            # Let the held calls answer, then run another task through the same pool to the end.
            service.release()
            other = await started_task(manager, "上海市")
            assert (await manager.wait_for_task(other, timeout=30))["status"] == "SUCCEEDED"
            await wait_until(lambda: service.held() == 0, "the held calls have returned")
            assert manager.get_task_status(task_id) == cancelled
            assert (await manager.pool_stats())["calls_by_task"][task_id] == 6

        assert cancelled["finished_at"] is not None
        assert cancelled["current_step"] == "已取消"
        # The root and the 5 held cities; the 3 queued cities and every district: never asked.
        assert len(service.calls_under(beijing)) == 6

    asyncio.run(body())


def test_cleanup_right_after_cancel_does_not_revive_the_task(
    open_manager: ManagerFactory,
) -> None:
    """A task cancelled and then cleaned up at once, with a call still in flight: the call's
    answer brings no further call and nothing into the log."""
    tree = make_tree(["北京市", "上海市"], cities=3, districts=2)
    beijing = ("北京市",)
    service = FakeLLMService(tree, hold=lambda path: path == beijing)

    async def body() -> None:
        async with open_manager(service) as manager:
            task_id = await started_task(manager, "北京市")
            await wait_until(lambda: service.held() == 1, "the root call is held")
            assert await manager.cancel_task(task_id)
            assert await manager.cleanup_old_tasks(0) == 1
            service.release()
            other = await started_task(manager, "上海市")
            assert (await manager.wait_for_task(other, timeout=30))["status"] == "SUCCEEDED"
            assert manager.get_task_status(task_id) is None
            assert task_id not in (await manager.pool_stats())["calls_by_task"]
        assert len(service.calls_under(beijing)) == 1

    asyncio.run(body())


def test_cancel_pending_task(open_manager: ManagerFactory) -> None:
    """A PENDING task can be cancelled; it then cannot be started and makes no call."""
    service = FakeLLMService(make_tree(["北京市"]))

    async def body() -> None:
        async with open_manager(service) as manager:
            task_id = await manager.create_refresh_task("province", "北京市")
            assert await manager.cancel_task(task_id) is True
            assert manager.get_task_status(task_id)["status"] == "CANCELLED"
            assert await manager.start_task(task_id) is False
            assert manager.get_task_status(task_id)["status"] == "CANCELLED"

    asyncio.run(body())
    assert service.calls == []


def test_cancel_of_a_finished_or_unknown_task_returns_false(open_manager: ManagerFactory) -> None:
    """Cancelling a task that has finished (or was already cancelled), or an unknown id, is
    refused with False and changes nothing."""

    async def body() -> None:
        async with open_manager() as manager:
            done = await started_task(manager, "北京市")
            finished = await manager.wait_for_task(done, timeout=30)
            assert finished["status"] == "SUCCEEDED"
            assert await manager.cancel_task(done) is False
            assert manager.get_task_status(done) == finished

            pending = await manager.create_refresh_task("full")
            assert await manager.cancel_task(pending) is True
            assert await manager.cancel_task(pending) is False

            assert await manager.cancel_task("no-such-task") is False
            assert manager.get_task_status("no-such-task") is None

    asyncio.run(body())


# --- close ---------------------------------------------------------------------------------------


def test_close_leaves_no_thread_and_no_actor(open_manager: ManagerFactory) -> None:
    """Closing a manager, even with a task running and a call in flight, stops every actor and
    every thread it started: the thread set is back to what it was before."""
    before = set(threading.enumerate())
    service = FakeLLMService(make_tree(["北京市"]), hold=lambda path: True)

    async def body() -> None:
        async with open_manager(service) as manager:
            task_id = await started_task(manager, "北京市")
            await wait_until(lambda: service.held() == 1, "a call is in flight")
            assert pykka.ActorRegistry.get_all()
            assert len(threading.enumerate()) > len(before)
            assert manager.get_task_status(task_id)["status"] == "RUNNING"
        assert pykka.ActorRegistry.get_all() == []
        assert not manager.system.running

    asyncio.run(body())  # its own executor thread (used by ``aclose``) ends with it
    for thread in set(threading.enumerate()) - before:
        thread.join(timeout=10)
    assert set(threading.enumerate()) == before


def test_closed_manager_refuses_changes(open_manager: ManagerFactory) -> None:
    """After ``close()`` a change request raises instead of hanging; close is idempotent."""

    async def body() -> None:
        manager = open_manager()
        task_id = await manager.create_refresh_task("full")
        manager.close()
        manager.close()
        with pytest.raises(RuntimeError, match="closed"):
            await manager.create_refresh_task("full")
        with pytest.raises(RuntimeError, match="closed"):
            await manager.start_task(task_id)
        with pytest.raises(RuntimeError, match="closed"):
            await manager.cancel_task(task_id)
        with pytest.raises(RuntimeError, match="closed"):
            await manager.cleanup_old_tasks(0)

    asyncio.run(body())


# --- the asyncio face ----------------------------------------------------------------------------


def test_awaiting_the_guide_api_never_blocks_the_event_loop(open_manager: ManagerFactory) -> None:
    """While a coroutine awaits create, start, cancel or a task's end, other coroutines on the
    same loop keep running (pykka's own ``await future`` would freeze them)."""
    service = FakeLLMService(make_tree(["北京市"]), delay=0.002)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async def ticking(aw: Any) -> tuple[Any, int]:
        """Await ``aw``; its result and how often the ticker ran meanwhile."""
        before = ticks
        result = await aw
        return result, ticks - before

    async def body() -> None:
        tick_task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        try:
            async with open_manager(service) as manager:
                task_id, during_create = await ticking(
                    manager.create_refresh_task("province", "北京市")
                )
                started, during_start = await ticking(manager.start_task(task_id))
                final, during_wait = await ticking(manager.wait_for_task(task_id, timeout=30))
                other = await manager.create_refresh_task("full")
                cancelled, during_cancel = await ticking(manager.cancel_task(other))
                _, during_cleanup = await ticking(manager.cleanup_old_tasks(24))
        finally:
            tick_task.cancel()
        assert started is True
        assert cancelled is True
        assert final["status"] == "SUCCEEDED"
        assert during_create > 0
        assert during_start > 0
        assert during_wait > 0
        assert during_cancel > 0
        assert during_cleanup > 0

    asyncio.run(body())
