"""The LLM fetch pool: the concurrency bound, fairness between tasks, retries and backoff.

The LLM is a recording fake (``fakes.FakeLLMService``) that measures what the system does to
it; everything else (actors, journal, event log, TaskManager) is the real thing.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from conftest import ManagerFactory
from fakes import FakeLLMService, calls_in, fail_always, fail_first, make_tree

from events import FetchRetried, NodeFailed
from llm import (
    LLMRateLimited,
    LLMServerError,
    LLMTimeout,
    PermanentLLMError,
    SimulatedLLMService,
)
from store import iter_valid
from tasks import TaskManager

BEIJING = make_tree(["北京市"], cities=2, districts=2, hospitals=2)
"""北京市 -> 北京第1市, 北京第2市 -> 东区, 西区 -> 2 hospitals each: 7 calls."""
CITY_1 = ("北京市", "北京第1市")
CITY_2 = ("北京市", "北京第2市")


def retries_in(log_path: Path) -> list[FetchRetried]:
    """Every ``FetchRetried`` event the log holds, in log order."""
    _, records, _ = iter_valid(str(log_path))
    return [r.event for r in records if isinstance(r.event, FetchRetried)]


async def run_province(manager: TaskManager, province: str = "北京市") -> dict[str, Any]:
    """Create, start and wait for a province task; its final status."""
    task_id = await manager.create_refresh_task("province", province)
    assert await manager.start_task(task_id)
    return await manager.wait_for_task(task_id, timeout=30)


# --- the concurrency bound ---------------------------------------------------------------------


def test_never_more_than_five_calls_in_flight_across_three_tasks(
    open_manager: ManagerFactory,
) -> None:
    """Three tasks running at once share one bound: at most 5 calls in flight, and 5 reached."""
    provinces = ["北京市", "上海市", "天津市"]
    tree = make_tree(provinces, cities=4, districts=3)
    service = FakeLLMService(tree, delay=0.003)

    async def body() -> None:
        async with open_manager(service) as manager:  # the default concurrency
            ids = [await manager.create_refresh_task("province", p) for p in provinces]
            for task_id in ids:
                assert await manager.start_task(task_id)
            finals = [await manager.wait_for_task(t, timeout=30) for t in ids]
            stats = await manager.pool_stats()
        assert [s["status"] for s in finals] == ["SUCCEEDED"] * 3
        assert service.max_in_flight == 5
        assert stats["peak_in_flight"] == 5
        assert stats["calls"] == len(service.calls) == 3 * calls_in(tree, ("北京市",))

    asyncio.run(body())


@pytest.mark.parametrize("concurrency", [1, 3])
def test_the_concurrency_setting_is_the_bound(
    open_manager: ManagerFactory, concurrency: int
) -> None:
    """``concurrency=N`` allows N calls in flight, never more, however wide the tree."""
    tree = make_tree(["北京市", "上海市"], cities=4, districts=2)
    service = FakeLLMService(tree, delay=0.002)

    async def body() -> None:
        async with open_manager(service, concurrency=concurrency) as manager:
            ids = [await manager.create_refresh_task("province", p) for p in ("北京市", "上海市")]
            for task_id in ids:
                await manager.start_task(task_id)
            for task_id in ids:
                assert (await manager.wait_for_task(task_id, timeout=30))["status"] == "SUCCEEDED"
            assert len(manager.system.workers) == concurrency
        assert service.max_in_flight == concurrency

    asyncio.run(body())


# --- fairness ------------------------------------------------------------------------------------


def test_province_task_started_during_full_refresh_is_served_at_once(
    open_manager: ManagerFactory,
) -> None:
    """A province task started mid-way through a full refresh gets calls at once and finishes
    while the full refresh is still far from done, instead of queueing behind it."""
    full_provinces = ["北京市", "上海市", "天津市"]
    tree = make_tree([*full_provinces, "河北省"], cities=5, districts=5)
    # The full refresh only knows three provinces, so every call under 河北省 is the province
    # task's: the calls tell the two tasks apart by path.
    service = FakeLLMService(tree, provinces=full_provinces, delay=0.003)
    hebei = ("河北省",)

    async def body() -> None:
        async with open_manager(service) as manager:
            full = await manager.create_refresh_task("full")
            await manager.start_task(full)
            while len(service.calls) < 10:
                await asyncio.sleep(0.001)
            province = await manager.create_refresh_task("province", "河北省")
            await manager.start_task(province)
            for task_id in (full, province):
                assert (await manager.wait_for_task(task_id, timeout=30))["status"] == "SUCCEEDED"

    asyncio.run(body())
    paths = service.paths()
    full_calls = [i for i, p in enumerate(paths) if p[:1] != hebei]
    province_calls = [i for i, p in enumerate(paths) if p[:1] == hebei]
    assert len(province_calls) == calls_in(tree, hebei) == 31
    assert len(full_calls) == 1 + 3 * 31
    # The province's first call comes while most of the full refresh is still to do ...
    assert sum(1 for i in full_calls if i > province_calls[0]) > len(full_calls) / 2
    # ... and it is done long before the full refresh: the tasks share the pool turn by turn.
    assert sum(1 for i in full_calls if i > province_calls[-1]) > len(full_calls) / 4


# --- retries and backoff -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        lambda: LLMServerError("503"),
        lambda: LLMTimeout("slow"),
        lambda: LLMRateLimited("429"),
    ],
    ids=["server_error", "timeout", "rate_limit_without_retry_after"],
)
def test_retries_are_journaled_with_exponential_backoff(
    open_manager: ManagerFactory, log_path: Path, error: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A call that fails 3 times is retried 3 times, each retry journaled as ``FetchRetried``
    with attempts 1, 2, 3 and delays ``base * 2**n`` (n = 0, 1, 2) and logged at WARNING; then
    the task succeeds."""
    base = 0.001
    service = FakeLLMService(BEIJING, errors={CITY_1: fail_first(3, error)})

    async def body() -> dict[str, Any]:
        async with open_manager(service, max_retries=3, backoff_base=base) as manager:
            return await run_province(manager)

    status = asyncio.run(body())
    assert status["status"] == "SUCCEEDED"
    assert status["retries"] == 3
    assert status["counts"]["districts"] == 4
    assert service.attempts[CITY_1] == 4
    retried = retries_in(log_path)
    assert [(e.path, e.attempt) for e in retried] == [(CITY_1, 1), (CITY_1, 2), (CITY_1, 3)]
    assert [e.delay_s for e in retried] == [base * 2**n for n in range(3)]
    assert all(type(error()).__name__ in e.error for e in retried)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "retry" in r.message]
    assert len(warnings) == 3


def test_backoff_is_capped(open_manager: ManagerFactory, log_path: Path) -> None:
    """The wait before a retry never exceeds ``backoff_cap``."""
    service = FakeLLMService(BEIJING, errors={CITY_1: fail_first(3, LLMServerError)})

    async def body() -> dict[str, Any]:
        async with open_manager(
            service, max_retries=3, backoff_base=0.001, backoff_cap=0.002
        ) as manager:
            return await run_province(manager)

    assert asyncio.run(body())["status"] == "SUCCEEDED"
    assert [e.delay_s for e in retries_in(log_path)] == [0.001, 0.002, 0.002]


def test_node_failing_every_attempt_fails_the_task_and_keeps_the_rest(
    open_manager: ManagerFactory, log_path: Path
) -> None:
    """A node that fails all its attempts ends the task FAILED with its path listed, while its
    siblings and cousins are still fetched and everything fetched is kept."""
    bad = ("北京市", "北京第1市", "东区")
    service = FakeLLMService(BEIJING, errors={bad: fail_always(lambda: LLMTimeout("no answer"))})

    async def body() -> tuple[dict[str, Any], dict[str, Any] | None]:
        async with open_manager(service, max_retries=2, backoff_base=0.001) as manager:
            status = await run_province(manager)
            return status, await manager.get_task_tree(status["task_id"])

    status, tree = asyncio.run(body())
    assert status["status"] == "FAILED"
    assert status["failed_paths"] == [list(bad)]
    assert "北京市 / 北京第1市 / 东区" in status["error"]
    assert "LLMTimeout" in status["error"]
    assert status["progress"] < 100
    assert service.attempts[bad] == 3  # the first call and 2 retries
    assert status["counts"] == {"provinces": 1, "cities": 2, "districts": 4, "hospitals": 6}
    assert tree is not None
    city_1 = tree["children"]["北京第1市"]
    assert city_1["东区"] is None
    assert set(city_1["西区"]) == set(BEIJING[(*CITY_1, "西区")])
    assert set(tree["children"]["北京第2市"]["东区"]) == set(BEIJING[(*CITY_2, "东区")])
    assert list(tree["failed"]) == ["北京市 / 北京第1市 / 东区"]
    _, records, _ = iter_valid(str(log_path))
    failed = [r.event for r in records if isinstance(r.event, NodeFailed)]
    assert [e.path for e in failed] == [bad]
    assert [e.attempt for e in retries_in(log_path)] == [1, 2]


def test_permanent_error_is_not_retried(open_manager: ManagerFactory, log_path: Path) -> None:
    """A ``PermanentLLMError`` fails the node at once: one call, no ``FetchRetried``."""
    service = FakeLLMService(
        BEIJING, errors={CITY_1: fail_always(lambda: PermanentLLMError("bad request"))}
    )

    async def body() -> dict[str, Any]:
        async with open_manager(service, max_retries=3, backoff_base=0.001) as manager:
            return await run_province(manager)

    status = asyncio.run(body())
    assert status["status"] == "FAILED"
    assert status["failed_paths"] == [list(CITY_1)]
    assert "PermanentLLMError" in status["error"]
    assert service.attempts[CITY_1] == 1
    assert retries_in(log_path) == []
    assert status["retries"] == 0
    assert status["counts"]["districts"] == 2  # 北京第2市's, fetched all the same


def test_rate_limit_retry_after_is_a_minimum_delay(
    open_manager: ManagerFactory, log_path: Path
) -> None:
    """A rate limit's ``retry_after`` is waited at least, even when the backoff is shorter; a
    shorter ``retry_after`` does not cut the backoff."""
    slow, fast = 0.05, 0.0001
    service = FakeLLMService(
        BEIJING,
        errors={
            CITY_1: fail_first(1, lambda: LLMRateLimited(retry_after=slow)),
            CITY_2: fail_first(1, lambda: LLMRateLimited(retry_after=fast)),
        },
    )

    async def body() -> dict[str, Any]:
        async with open_manager(service, max_retries=3, backoff_base=0.01) as manager:
            return await run_province(manager)

    assert asyncio.run(body())["status"] == "SUCCEEDED"
    delays = {e.path: e.delay_s for e in retries_in(log_path)}
    assert delays == {CITY_1: slow, CITY_2: 0.01}
    first, second = service.calls_under(CITY_1)[:2]
    assert first.path == second.path == CITY_1
    assert first.ended is not None
    # The retry is a timer armed after the failure: it cannot start before retry_after is over.
    assert second.started - first.ended >= slow


def test_retry_waiting_for_its_backoff_holds_no_slot(open_manager: ManagerFactory) -> None:
    """With a single slot, a call waiting out a long backoff lets every other node go first."""
    service = FakeLLMService(
        BEIJING, errors={CITY_1: fail_first(1, lambda: LLMRateLimited(retry_after=0.3))}
    )

    async def body() -> dict[str, Any]:
        async with open_manager(service, concurrency=1, max_retries=1) as manager:
            return await run_province(manager)

    assert asyncio.run(body())["status"] == "SUCCEEDED"
    paths = service.paths()
    first, retry = (i for i, p in enumerate(paths) if p == CITY_1)
    between = paths[first + 1 : retry]
    assert CITY_2 in between
    assert (*CITY_2, "东区") in between
    assert (*CITY_2, "西区") in between


def test_injected_failures_of_every_kind_are_retried_to_success(
    open_manager: ManagerFactory,
) -> None:
    """The simulated backend's failures (timeouts, 5xx, rate limits, malformed answers) are all
    retried, and a generous retry budget still gives the exact tree."""
    service = SimulatedLLMService(latency_ms=(0, 0), failure_rate=0.3, seed=7)

    async def body() -> dict[str, Any]:
        async with open_manager(service, max_retries=12, backoff_base=0.001) as manager:
            return await run_province(manager)

    status = asyncio.run(body())
    assert status["status"] == "SUCCEEDED"
    assert status["retries"] == service.failures_injected > 0
    assert status["counts"]["provinces"] == 1
    assert status["counts"]["cities"] == 1
    assert status["counts"]["districts"] == 16


class _Suspending(SimulatedLLMService):
    """The simulated backend: with latency its calls suspend in a sleep, without they do not."""


@pytest.mark.parametrize(
    ("any_loop", "eager", "latency"),
    [(False, False, (0, 2)), (True, False, (0, 2)), (True, True, (0, 2)), (True, True, (0, 0))],
)
def test_every_way_of_running_a_call_gives_the_same_tree(
    open_manager: ManagerFactory, any_loop: bool, eager: bool, latency: tuple[float, float]
) -> None:
    """Shared loop, own loop, and own loop with an eager first step all fetch the same tree,
    whether a call suspends or completes at once."""
    service = _Suspending(latency_ms=latency, seed=3)
    service.any_event_loop = any_loop
    service.eager_start = eager
    manager = open_manager(service)

    async def run() -> tuple[dict[str, Any], dict[str, Any] | None]:
        task_id = await manager.create_refresh_task("province", "北京市")
        await manager.start_task(task_id)
        return await manager.wait_for_task(task_id, timeout=30), await manager.get_task_tree(
            task_id
        )

    status, tree = asyncio.run(run())
    assert status["status"] == "SUCCEEDED"
    assert tree is not None
    districts = tree["children"]["北京市"]
    assert len(districts) == 16
    assert all(2 <= len(hospitals) <= 6 for hospitals in districts.values())
