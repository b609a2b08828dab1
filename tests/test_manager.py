"""TaskManager, the guide's API: flows, progress, cleanup, restart, bad input and settings."""

from __future__ import annotations

import asyncio
import copy
import os
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import ManagerFactory
from fakes import FakeLLMService, fail_always, make_tree

from events import ProgressChanged, TaskCreated, TasksCleanedUp, TaskSucceeded
from llm import Divisions, LLMServerError, SimulatedLLMService, synthetic_hospitals
from store import INTACT, audit_log, iter_valid, snapshot_path
from tasks import ConfigError, ProgressTracker, Settings, TaskManager, load_settings

STEP = re.compile(r"^\S+( / \S+)*: (省份列表|市级列表|区县列表|医院列表)$")
"""A running task's ``current_step``: where it is, in words, e.g. ``广东省 / 广州市: 区县列表``."""


def expected_province_tree(province: str) -> dict[str, Any]:
    """The tree a province task must fetch from the simulated backend: the real divisions, and
    the synthetic hospitals of each district."""
    divisions = Divisions.load()
    return {
        city: {
            district: dict.fromkeys(synthetic_hospitals((province, city, district)))
            for district in divisions.children((province, city))
        }
        for city in divisions.children((province,))
    }


def events_in(log_path: Path) -> list[Any]:
    """Every event of the log, in order (read-only, while a writer may be running)."""
    _, records, result = iter_valid(str(log_path))
    assert result.fault == INTACT
    return [r.event for r in records]


async def run_task(manager: TaskManager, task_type: str, target: str | None = None) -> str:
    """Create and start a task, wait for its end; its id."""
    task_id = await manager.create_refresh_task(task_type, target)
    assert await manager.start_task(task_id)
    await manager.wait_for_task(task_id, timeout=60)
    return task_id


# --- whole flows on the simulated backend --------------------------------------------------------


def test_full_refresh_fetches_the_whole_country(open_manager: ManagerFactory) -> None:
    """A full refresh on the simulated backend succeeds with every division of China:
    34 provinces, 372 cities, 2852 districts, and each district's synthetic hospitals."""

    async def body() -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        async with open_manager() as manager:
            task_id = await run_task(manager, "full")
            return manager.get_task_status(task_id), await manager.get_task_tree(task_id)

    status, tree = asyncio.run(body())
    assert status is not None
    assert tree is not None
    assert status["status"] == "SUCCEEDED"
    assert status["progress"] == 100
    assert status["error"] is None
    assert status["failed_paths"] == []
    assert status["pending_nodes"] == 0
    divisions = Divisions.load()
    district_paths = [
        (p, c, d)
        for p in divisions.provinces()
        for c in divisions.children((p,))
        for d in divisions.children((p, c))
    ]
    assert status["counts"] == {
        "provinces": 34,
        "cities": 372,
        "districts": 2852,
        "hospitals": sum(len(synthetic_hospitals(path)) for path in district_paths),
    }
    assert len(district_paths) == 2852
    assert list(tree["children"]) == divisions.provinces()
    assert tree["children"]["北京市"] == expected_province_tree("北京市")
    assert tree["frontier"] == []
    assert tree["failed"] == {}


def test_province_refresh_fetches_that_province(open_manager: ManagerFactory) -> None:
    """A province task for 北京市 succeeds with 1 province, 1 city, 16 districts and exactly
    the expected tree; "北京" is accepted as 北京市."""

    async def body() -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        async with open_manager() as manager:
            task_id = await run_task(manager, "province", "北京")
            return manager.get_task_status(task_id), await manager.get_task_tree(task_id)

    status, tree = asyncio.run(body())
    assert status is not None
    assert tree is not None
    assert status["target"] == "北京市"
    assert status["status"] == "SUCCEEDED"
    assert status["progress"] == 100
    expected = expected_province_tree("北京市")
    assert status["counts"] == {
        "provinces": 1,
        "cities": 1,
        "districts": 16,
        "hospitals": sum(len(d) for city in expected.values() for d in city.values()),
    }
    assert tree["root"] == ["北京市"]
    assert tree["children"] == expected


def test_same_district_name_in_two_cities_stays_two_nodes(open_manager: ManagerFactory) -> None:
    """朝阳区 of 北京市 and 朝阳区 of 长春市 are asked for by their full paths, get their own
    hospitals and stay separate nodes of the tree."""
    beijing = ("北京市", "北京市", "朝阳区")
    changchun = ("吉林省", "长春市", "朝阳区")
    tree = {
        ("北京市",): ("北京市",),
        ("北京市", "北京市"): ("朝阳区",),
        beijing: ("北京朝阳医院",),
        ("吉林省",): ("长春市",),
        ("吉林省", "长春市"): ("朝阳区",),
        changchun: ("长春朝阳医院",),
    }
    service = FakeLLMService(tree)

    async def body() -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        async with open_manager(service) as manager:
            task_id = await run_task(manager, "full")
            return manager.get_task_status(task_id), await manager.get_task_tree(task_id)

    status, fetched = asyncio.run(body())
    assert status is not None
    assert fetched is not None
    assert status["status"] == "SUCCEEDED"
    assert status["counts"]["districts"] == 2
    assert status["counts"]["hospitals"] == 2
    assert fetched["children"]["北京市"]["北京市"]["朝阳区"] == {"北京朝阳医院": None}
    assert fetched["children"]["吉林省"]["长春市"]["朝阳区"] == {"长春朝阳医院": None}
    asked = [place for place in service.args if place == "朝阳区"]
    assert sorted(place.path for place in asked) == sorted([beijing, changchun])


def test_same_district_name_on_the_simulated_backend(open_manager: ManagerFactory) -> None:
    """On the simulated backend the two 朝阳区 get the hospitals of their own path."""
    beijing = ("北京市", "北京市", "朝阳区")
    changchun = ("吉林省", "长春市", "朝阳区")

    async def body() -> list[dict[str, Any] | None]:
        async with open_manager() as manager:
            ids = [await manager.create_refresh_task("province", p) for p in ("北京市", "吉林省")]
            for task_id in ids:
                await manager.start_task(task_id)
            for task_id in ids:
                await manager.wait_for_task(task_id, timeout=60)
            return [await manager.get_task_tree(task_id) for task_id in ids]

    bj, jl = asyncio.run(body())
    assert bj is not None
    assert jl is not None
    assert list(bj["children"]["北京市"]["朝阳区"]) == synthetic_hospitals(beijing)
    assert list(jl["children"]["长春市"]["朝阳区"]) == synthetic_hospitals(changchun)
    assert set(synthetic_hospitals(beijing)).isdisjoint(synthetic_hospitals(changchun))


# --- progress ------------------------------------------------------------------------------------


def test_progress_never_decreases_and_reaches_100_only_at_success(
    open_manager: ManagerFactory, log_path: Path
) -> None:
    """Progress seen by a callback and by the guide's ProgressTracker only goes up, reaches 100
    only with SUCCEEDED, and ``current_step`` says in words where the task is."""
    seen: list[tuple[int, str]] = []
    tracked: list[tuple[int, str]] = []
    tracker = ProgressTracker(100)
    tracker.add_callback(lambda progress, step: tracked.append((progress, step)))

    async def body() -> str:
        async with open_manager(SimulatedLLMService(latency_ms=(0, 1))) as manager:
            task_id = await manager.create_refresh_task("province", "广东省")
            manager.add_progress_callback(task_id, lambda p, s: seen.append((p, s)))
            manager.track(task_id, tracker)
            await manager.start_task(task_id)
            final = await manager.wait_for_task(task_id, timeout=60)
            assert final["status"] == "SUCCEEDED"
            while not (seen and seen[-1][0] == 100 and tracked and tracked[-1][0] == 100):
                await asyncio.sleep(0.001)  # callbacks run on this loop, soon after
            return task_id

    task_id = asyncio.run(body())
    for series in (seen, tracked):
        values = [p for p, _ in series]
        assert values == sorted(values), "progress went backwards"
        assert values[-1] == 100
        assert 100 not in values[:-1]
        assert len(set(values)) > 10, "progress moved in a few big jumps only"
    assert seen[-1] == (100, "完成")
    assert tracker.progress == 100
    running_steps = [s for _, s in seen if s not in ("开始刷新", "完成")]
    assert running_steps
    assert all(STEP.match(step) for step in running_steps), running_steps
    assert any(re.fullmatch(r"广东省 / \S+ / \S+: 医院列表", step) for step in running_steps), (
        running_steps
    )
    journaled = [e for e in events_in(log_path) if isinstance(e, ProgressChanged)]
    assert [e.task_id for e in journaled] == [task_id] * len(journaled)
    assert [e.progress for e in journaled] == sorted({e.progress for e in journaled})
    assert all(0 < e.progress < 100 for e in journaled)


# --- cleanup -------------------------------------------------------------------------------------


def test_cleanup_removes_finished_tasks_but_keeps_running_ones_and_the_history(
    open_manager: ManagerFactory, log_path: Path
) -> None:
    """``cleanup_old_tasks(0)`` forgets every finished task (status, list, pool counters), keeps
    running and pending ones, journals ``TasksCleanedUp``, and the log keeps the history."""
    tree = make_tree(["北京市", "上海市"])
    service = FakeLLMService(tree, hold=lambda path: path[:1] == ("上海市",))

    async def body() -> dict[str, str]:
        async with open_manager(service) as manager:
            ids = {"done": await run_task(manager, "province", "北京市")}
            ids["cancelled"] = await manager.create_refresh_task("province", "北京市")
            await manager.cancel_task(ids["cancelled"])
            ids["running"] = await manager.create_refresh_task("province", "上海市")
            await manager.start_task(ids["running"])
            ids["pending"] = await manager.create_refresh_task("full")
            statuses = {name: manager.get_task_status(t)["status"] for name, t in ids.items()}
            assert statuses == {
                "done": "SUCCEEDED",
                "cancelled": "CANCELLED",
                "running": "RUNNING",
                "pending": "PENDING",
            }

            assert await manager.cleanup_old_tasks(24) == 0  # nothing finished 24 h ago
            assert len(manager.list_tasks()) == 4
            assert not [e for e in events_in(log_path) if isinstance(e, TasksCleanedUp)]

            assert ids["done"] in (await manager.pool_stats())["calls_by_task"]
            assert await manager.cleanup_old_tasks(0) == 2
            assert ids["done"] not in (await manager.pool_stats())["calls_by_task"]
            assert manager.get_task_status(ids["done"]) is None
            assert manager.get_task_status(ids["cancelled"]) is None
            assert {s["task_id"] for s in manager.list_tasks()} == {ids["running"], ids["pending"]}
            assert manager.list_tasks("SUCCEEDED") == []
            assert await manager.start_task(ids["done"]) is False

            service.release()
            await manager.wait_for_task(ids["running"], timeout=30)
            assert await manager.cleanup_old_tasks(0) == 1
            assert [s["task_id"] for s in manager.list_tasks()] == [ids["pending"]]
            return ids

    ids = asyncio.run(body())
    events = events_in(log_path)
    cleaned = [e for e in events if isinstance(e, TasksCleanedUp)]
    assert [set(e.task_ids) for e in cleaned] == [
        {ids["done"], ids["cancelled"]},
        {ids["running"]},
    ]
    assert [e.older_than_hours for e in cleaned] == [0.0, 0.0]
    history = [type(e).__name__ for e in events if e.task_id == ids["done"]]
    assert history[:2] == ["TaskCreated", "TaskStarted"]
    assert history[-1] == "TaskSucceeded"
    assert "ChildrenFetched" in history

    async def reopened() -> list[dict[str, Any]]:
        async with open_manager(service) as manager:
            return manager.list_tasks()

    assert [s["task_id"] for s in asyncio.run(reopened())] == [ids["pending"]]


@pytest.mark.parametrize("hours", [-1, -0.5, "24", None, True, float("nan")])
def test_cleanup_rejects_bad_hours(open_manager: ManagerFactory, hours: Any) -> None:
    """``cleanup_old_tasks`` with a negative or non-numeric age is a ValueError."""

    async def body() -> None:
        async with open_manager() as manager:
            with pytest.raises(ValueError, match="hours"):
                await manager.cleanup_old_tasks(hours)

    asyncio.run(body())


# --- restart -------------------------------------------------------------------------------------


def test_new_manager_on_the_same_log_shows_the_same_statuses(
    open_manager: ManagerFactory, log_path: Path
) -> None:
    """Closing and reopening the log gives back every task's status, field for field, and its
    tree, whether replay starts from the snapshot or from the first event; a task running at
    close is marked interrupted."""
    tree = make_tree(["北京市", "上海市", "天津市"])
    bad = ("上海市", "上海第1市")
    service = FakeLLMService(
        tree,
        errors={bad: fail_always(lambda: LLMServerError("down"))},
        hold=lambda path: path[:1] == ("天津市",),
    )

    async def snapshot_of(manager: TaskManager) -> tuple[list[Any], list[Any]]:
        statuses = manager.list_tasks()
        trees = [await manager.get_task_tree(s["task_id"]) for s in statuses]
        return statuses, trees

    async def first_run() -> tuple[list[Any], list[Any]]:
        async with open_manager(service, max_retries=1, backoff_base=0.001) as manager:
            await run_task(manager, "province", "北京市")  # SUCCEEDED
            await run_task(manager, "province", "上海市")  # FAILED, with a failed path
            await run_task(manager, "province", "北晶")  # FAILED, unknown province
            cancelled = await manager.create_refresh_task("full")
            await manager.cancel_task(cancelled)  # CANCELLED
            await manager.create_refresh_task("province", "广东省")  # PENDING
            running = await manager.create_refresh_task("province", "天津市")
            await manager.start_task(running)  # RUNNING, its first call held open
            while service.held() == 0:
                await asyncio.sleep(0.002)
            return await snapshot_of(manager)

    async def reopen() -> tuple[list[Any], list[Any]]:
        async with open_manager(FakeLLMService({})) as manager:
            return await snapshot_of(manager)

    before = asyncio.run(first_run())
    assert [s["status"] for s in before[0]] == [
        "SUCCEEDED",
        "FAILED",
        "FAILED",
        "CANCELLED",
        "PENDING",
        "RUNNING",
    ]
    assert before[0][1]["failed_paths"] == [list(bad)]
    # The one difference: the task RUNNING at close is now known to be interrupted (its
    # process stopped mid-task), so that it can be resumed.
    expected = copy.deepcopy(before)
    assert expected[0][5]["interrupted"] is False
    expected[0][5]["interrupted"] = True
    assert asyncio.run(reopen()) == expected
    os.remove(snapshot_path(str(log_path)))
    assert asyncio.run(reopen()) == expected


# --- bad input -----------------------------------------------------------------------------------


def test_bad_input_is_refused_without_touching_the_log(
    open_manager: ManagerFactory, log_path: Path
) -> None:
    """Unknown task types, a province task without target, an unknown status filter, starting
    a task twice and unknown ids are refused; none of it writes to the log, which stays intact.
    An unknown province is accepted, then ends FAILED naming it and the closest names."""

    async def body() -> None:
        async with open_manager() as manager:
            unknown = await manager.create_refresh_task("province", "北晶")
            assert await manager.start_task(unknown) is True
            failed = await manager.wait_for_task(unknown, timeout=30)
            assert failed["status"] == "FAILED"
            assert "北晶" in failed["error"]
            assert "北京市" in failed["error"]
            alias = await manager.create_refresh_task("province", "北京")
            assert manager.get_task_status(alias)["target"] == "北京市"
            assert await manager.start_task(alias) is True
            await manager.wait_for_task(alias, timeout=30)
            logged = len(events_in(log_path))

            with pytest.raises(ValueError, match="weekly") as info:
                await manager.create_refresh_task("weekly")
            assert "'full'" in str(info.value)
            assert "'province'" in str(info.value)
            for target in (None, "", "   "):
                with pytest.raises(ValueError, match="province"):
                    await manager.create_refresh_task("province", target)
            with pytest.raises(ValueError, match="full"):
                await manager.create_refresh_task("full", "北京市")
            assert await manager.start_task(alias) is False  # SUCCEEDED, not PENDING
            assert await manager.start_task(unknown) is False  # FAILED, not PENDING
            assert await manager.start_task("no-such-task") is False
            assert await manager.cancel_task("no-such-task") is False
            assert manager.get_task_status("no-such-task") is None
            with pytest.raises(ValueError, match="BOGUS") as info:
                manager.list_tasks("BOGUS")
            assert "SUCCEEDED" in str(info.value)

            assert len(events_in(log_path)) == logged
            assert len(manager.list_tasks()) == 2

    asyncio.run(body())
    assert audit_log(log_path).fault == INTACT
    events = events_in(log_path)
    assert [e.target for e in events if isinstance(e, TaskCreated)] == ["北晶", "北京市"]
    assert len([e for e in events if isinstance(e, TaskSucceeded)]) == 1


def test_starting_a_running_task_again_returns_false(open_manager: ManagerFactory) -> None:
    """``start_task`` on a RUNNING task is False and does not start a second run."""
    service = FakeLLMService(make_tree(["北京市"]), hold=lambda path: True)

    async def body() -> None:
        async with open_manager(service) as manager:
            task_id = await manager.create_refresh_task("province", "北京市")
            assert await manager.start_task(task_id) is True
            assert await manager.start_task(task_id) is False
            while service.held() == 0:
                await asyncio.sleep(0.002)
            service.release()
            assert (await manager.wait_for_task(task_id, timeout=30))["status"] == "SUCCEEDED"

    asyncio.run(body())
    assert service.attempts[("北京市",)] == 1


def test_list_tasks_filters_by_status(open_manager: ManagerFactory) -> None:
    """``list_tasks(status)`` returns only the tasks in that status, oldest first."""

    async def body() -> None:
        async with open_manager() as manager:
            first = await manager.create_refresh_task("full")
            done = await run_task(manager, "province", "天津市")
            second = await manager.create_refresh_task("province", "上海市")
            assert [s["task_id"] for s in manager.list_tasks("PENDING")] == [first, second]
            assert [s["task_id"] for s in manager.list_tasks("SUCCEEDED")] == [done]
            assert manager.list_tasks("RUNNING") == []
            assert [s["task_id"] for s in manager.list_tasks()] == [first, done, second]

    asyncio.run(body())


# --- settings ------------------------------------------------------------------------------------


def test_settings_merge_file_environment_and_flags_with_flags_winning(tmp_path: Path) -> None:
    """Defaults < TOML file < HOSPITAL_REFRESH_* variables < flags."""
    config = tmp_path / "hospital-refresh.toml"
    config.write_text(
        'log_path = "from-file.hrlog"\n'
        "concurrency = 3\n"
        "max_retries = 2\n"
        "backoff_base = 0.5\n"
        "sim_latency_ms = [1, 2]\n",
        encoding="utf-8",
    )
    environ = {
        "HOSPITAL_REFRESH_CONCURRENCY": "4",
        "HOSPITAL_REFRESH_MAX_RETRIES": "6",
        "HOSPITAL_REFRESH_LOG": "from-env.hrlog",
    }
    settings = load_settings(
        str(config), flags={"concurrency": 7, "max_retries": None}, environ=environ
    )
    assert settings.concurrency == 7  # flag over env over file
    assert settings.max_retries == 6  # env over file (a None flag is "not given")
    assert settings.log_path == "from-env.hrlog"  # env over file
    assert settings.backoff_base == 0.5  # file over default
    assert settings.sim_latency_ms == (1.0, 2.0)
    assert settings.backoff_cap == Settings().backoff_cap  # default
    assert settings.retry_policy().max_retries == 6
    assert settings.system_config().concurrency == 7


def test_task_manager_reads_settings_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``TaskManager()`` takes its settings from the environment; its arguments win."""
    monkeypatch.setenv("HOSPITAL_REFRESH_LOG", str(tmp_path / "env.hrlog"))
    monkeypatch.setenv("HOSPITAL_REFRESH_CONCURRENCY", "2")
    monkeypatch.setenv("HOSPITAL_REFRESH_MAX_RETRIES", "4")
    monkeypatch.setenv("HOSPITAL_REFRESH_SIM_LATENCY_MS", "0-2")
    with TaskManager(concurrency=3) as manager:
        assert manager.log_path == str(tmp_path / "env.hrlog")
        assert manager.settings.concurrency == 3
        assert len(manager.system.workers) == 3
        assert manager.settings.max_retries == 4
        assert isinstance(manager.llm_service, SimulatedLLMService)
        assert manager.llm_service.latency_ms == (0.0, 2.0)
    assert (tmp_path / "env.hrlog").exists()


@pytest.mark.parametrize(
    ("source", "name", "value", "allowed"),
    [
        ("file", "concurrency", "0", "256"),
        ("file", "fsync", '"sometimes"', "batch"),
        ("file", "max_retries", "-1", ">= 0"),
        ("file", "sim_failure_rate", "1.5", "between 0 and 1"),
        ("file", "sim_failure_kinds", '["flood"]', "rate_limit"),
        ("file", "sim_latency_ms", "[50, 10]", "MAX"),
        ("file", "log_format", '"xml"', "json"),
        ("file", "log_level", '"LOUD"', "DEBUG"),
        ("file", "colour", '"blue"', "concurrency"),
        ("env", "concurrency", "many", "int"),
        ("env", "sim_latency_ms", "fast", "MIN-MAX"),
        ("flag", "concurrency", 300, "256"),
        ("flag", "backoff_jitter", 2.0, "between 0 and 1"),
    ],
)
def test_bad_setting_is_a_config_error_naming_it_and_what_is_allowed(
    tmp_path: Path, source: str, name: str, value: Any, allowed: str
) -> None:
    """A bad value, from any source, is a ConfigError naming the setting and the allowed values."""
    config = tmp_path / "hospital-refresh.toml"
    config.write_text(f"{name} = {value}\n" if source == "file" else "", encoding="utf-8")
    environ = {f"HOSPITAL_REFRESH_{name.upper()}": value} if source == "env" else {}
    flags = {name: value} if source == "flag" else {}
    with pytest.raises(ConfigError) as info:
        load_settings(str(config), flags=flags, environ=environ)
    message = str(info.value)
    assert name in message
    assert allowed in message


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    """A config file that does not exist is named in a ConfigError."""
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load_settings(str(missing), environ={})
