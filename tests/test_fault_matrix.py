"""The fault matrix: every failure the simulated backend injects ends as retried-and-succeeded
or as a listed failed node, never as a crash, a hang or bad data in the tree."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import ManagerFactory, simulated_tree

from events import FetchRetried, NodeFailed, TaskFailed
from llm import FAILURE_KINDS, LLMService, SimulatedLLMService, validate_names
from store import INTACT, iter_valid
from tasks import TaskManager

PROVINCE = "宁夏回族自治区"
"""28 nodes to fetch: the province, 5 cities and 22 districts."""

Node = tuple[str, ...]

REGIMES = {
    # name: (failure_rate, max_retries)
    "light": (0.2, 6),
    "mixed": (0.5, 1),
    "total": (1.0, 2),
}
"""``light`` must end SUCCEEDED after retries, ``total`` FAILED at the root; ``mixed`` may end
either way and is checked for consistency."""


def events_of(log_path: Path) -> list[Any]:
    """Every event of the log, which must be intact."""
    _, records, result = iter_valid(str(log_path))
    assert result.fault == INTACT
    return [r.event for r in records]


def tree_of(manager: TaskManager, task_id: str) -> dict[Node, tuple[str, ...]]:
    """A task's fetched tree, ``path -> children``, as the running manager's projection holds it."""
    query = manager.system.query(lambda projection: dict(projection.tasks[task_id].children))
    return query.result(timeout=10)


async def run_to_end(manager: TaskManager, resume: str | None = None) -> dict[str, Any]:
    """Run a province task (or resume ``resume``) to its end; a hang fails after 30 s."""
    if resume is None:
        task_id = await manager.create_refresh_task("province", PROVINCE)
        assert await manager.start_task(task_id)
    else:
        task_id = resume
        assert await manager.resume_task(task_id)
    return await manager.wait_for_task(task_id, timeout=30)


def check_outcome(
    status: dict[str, Any],
    tree: dict[Node, tuple[str, ...]],
    events: list[Any],
    truth: dict[Node, tuple[str, ...]],
) -> None:
    """SUCCEEDED with the true tree, or FAILED with every unfetched node listed failed; either
    way every list in the tree is the true one and passes validation."""
    task_id = status["task_id"]
    assert status["status"] in ("SUCCEEDED", "FAILED")
    for path, children in tree.items():
        assert children == truth[path]
        assert validate_names(list(children)) == list(children)
    failed = {tuple(p) for p in status["failed_paths"]}
    node_failed = {e.path for e in events if isinstance(e, NodeFailed) and e.task_id == task_id}
    if status["status"] == "SUCCEEDED":
        assert tree == truth
        assert failed == set()
        assert status["error"] is None
        return
    assert failed
    assert failed <= node_failed
    assert not failed & set(tree)
    (ended,) = [e for e in events if isinstance(e, TaskFailed) and e.task_id == task_id]
    assert set(ended.failed_paths) == failed
    assert f"{len(failed)} node(s) failed after retries" in status["error"]
    # Every true node is either fetched, failed, or below a failed node.
    for path in truth:
        assert path in tree or any(path[: len(f)] == f for f in failed), path


@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("kind", FAILURE_KINDS)
def test_injected_failures_end_retried_or_listed_never_crashed(
    log_path: Path,
    open_manager: ManagerFactory,
    caplog: pytest.LogCaptureFixture,
    kind: str,
    regime: str,
) -> None:
    """Each failure kind, at each rate, ends SUCCEEDED (retried) or FAILED with the failed
    nodes listed; the actors live on, the retries are journaled saying what went wrong, and a
    resume with a healthy backend completes the true tree."""
    caplog.set_level(logging.CRITICAL)  # the failures are expected; keep the output quiet
    rate, retries = REGIMES[regime]
    truth = simulated_tree(PROVINCE)
    service = SimulatedLLMService(
        latency_ms=(0, 0), failure_rate=rate, failure_kinds=(kind,), seed=len(kind) + 7
    )
    manager = open_manager(service, backoff_base=0.001, backoff_cap=0.01, max_retries=retries)
    status = asyncio.run(run_to_end(manager))
    task_id = status["task_id"]
    tree = tree_of(manager, task_id)
    assert manager.system.running
    manager.close()

    events = events_of(log_path)
    check_outcome(status, tree, events, truth)
    retried = [e for e in events if isinstance(e, FetchRetried)]
    assert retried
    assert status["retries"] == len(retried)
    says = {
        "timeout": "LLMTimeout: simulated LLM timed out",
        "server_error": "LLMServerError: simulated 503",
        "rate_limit": "LLMRateLimited: simulated 429",
        "malformed": "LLMMalformedOutput: LLM output rejected",
    }[kind]
    assert all(e.error.startswith(says) for e in retried)
    if kind == "rate_limit":
        assert all(e.delay_s >= 0.01 for e in retried)  # the backend's retry_after is honoured
    if regime == "light":
        assert status["status"] == "SUCCEEDED"
    if regime == "total":
        assert status["status"] == "FAILED"
        assert status["failed_paths"] == [[PROVINCE]]
        assert Counter(e.path for e in retried) == {(PROVINCE,): retries}
    if status["status"] == "SUCCEEDED":
        return

    healthy = open_manager(SimulatedLLMService(latency_ms=(0, 0)))
    resumed = asyncio.run(run_to_end(healthy, resume=task_id))
    assert resumed["status"] == "SUCCEEDED"
    assert tree_of(healthy, task_id) == truth


def test_every_malformed_variant_is_served_and_rejected(
    log_path: Path, open_manager: ManagerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """With every answer malformed, the backend rotates through all its bad outputs (not a
    list, a non-string item, an empty item, a control character, 10,000 items, an instruction)
    and each is rejected as what it is."""
    caplog.set_level(logging.CRITICAL)
    service = SimulatedLLMService(latency_ms=(0, 0), failure_rate=1.0, failure_kinds=("malformed",))
    manager = open_manager(service, backoff_base=0.001, backoff_cap=0.001, max_retries=5)
    status = asyncio.run(run_to_end(manager))
    manager.close()
    assert status["status"] == "FAILED"
    assert status["failed_paths"] == [[PROVINCE]]
    errors = [e.error for e in events_of(log_path) if isinstance(e, FetchRetried | NodeFailed)]
    assert len(errors) == 6
    wanted = [
        "got str",
        "not a string",
        "is empty",
        "control character U+0007",
        "distinct names, more than the 500 allowed",
        "looks like an instruction",
    ]
    for what in wanted:
        assert sum(what in error for error in errors) == 1, (what, errors)


class HangingService(LLMService):
    """Answers the province's city list, then never answers anything else."""

    async def get_cities(self, province: str) -> list[str]:
        return list(simulated_tree(PROVINCE)[(PROVINCE,)])

    async def get_districts(self, city: str) -> list[str]:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


class HangingOnAnyLoop(HangingService):
    """The same, run on each fetch actor's own loop."""

    any_event_loop = True


class HangingEagerly(HangingOnAnyLoop):
    """The same, with each call's first step taken before its task exists."""

    eager_start = True


@pytest.mark.parametrize("service", [HangingService, HangingOnAnyLoop, HangingEagerly])
def test_a_backend_that_hangs_times_out_and_lists_the_nodes_failed(
    log_path: Path,
    open_manager: ManagerFactory,
    caplog: pytest.LogCaptureFixture,
    service: type[HangingService],
) -> None:
    """Calls that never answer are cut by ``call_timeout``, retried, then listed failed: the
    task ends FAILED instead of hanging, whichever loop the calls run on."""
    caplog.set_level(logging.CRITICAL)
    manager = open_manager(
        service(), call_timeout=0.05, backoff_base=0.001, backoff_cap=0.001, max_retries=1
    )
    status = asyncio.run(run_to_end(manager))
    manager.close()
    cities = simulated_tree(PROVINCE)[(PROVINCE,)]
    assert status["status"] == "FAILED"
    assert sorted(map(tuple, status["failed_paths"])) == sorted((PROVINCE, c) for c in cities)
    retried = [e for e in events_of(log_path) if isinstance(e, FetchRetried)]
    assert len(retried) == len(cities)
    assert all(e.error == "LLMTimeout: no answer within 0.05 s" for e in retried)
