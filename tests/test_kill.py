"""The kill test: a full refresh SIGKILLed at random moments and resumed each time loses
nothing, repeats no journaled call, and ends with exactly the clean run's tree."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from killable_refresh import CONCURRENCY, KillReport, final_tree, kill_chain

SEED = int(os.environ.get("KILL_TEST_SEED", "20250615"))
"""The kill plan's seed (printed in every failure message); set KILL_TEST_SEED to vary it."""

MIN_KILLS = 22


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> KillReport:
    """One clean run, then ``run`` / ``resume --all`` processes on the simulated backend (1-3 ms
    per call, a snapshot every 50 events) each SIGKILLed at a random moment, at least
    ``MIN_KILLS`` times, and a last resume run to the end."""
    return kill_chain(tmp_path_factory.mktemp("kill"), min_kills=MIN_KILLS, seed=SEED)


def test_at_least_20_kills_spread_over_the_run(report: KillReport) -> None:
    """At least 20 processes were SIGKILLed, some in start-up, some early in the run and some
    late, and every process that was not killed exited 0."""
    trace = report.trace()
    total = len(report.clean_tree)
    killed = [life for life in report.lives if life.killed]
    assert len(killed) >= 20, trace
    assert all(life.returncode in (0, -signal.SIGKILL) for life in report.lives), trace
    assert any(not life.calls for life in killed), trace
    assert any(len(life.after.children) < total / 2 for life in killed if life.calls), trace
    assert any(len(life.after.children) > total / 2 for life in killed), trace


def test_final_tree_equals_the_clean_run_tree(report: KillReport) -> None:
    """After the last resume, each chain's task is SUCCEEDED and its tree has exactly the
    clean run's paths and children: no node lost, none added."""
    trace = report.trace()
    assert len(report.clean_tree) == len(report.clean.calls) == 3259, trace
    assert report.chains, trace
    for log, task_id in report.chains:
        assert final_tree(Path(log), task_id) == report.clean_tree, trace
    last_of_chain = {life.chain: life for life in report.lives}
    assert len(last_of_chain) == len(report.chains), trace
    for life in last_of_chain.values():
        # The last process ran to the end, or was killed after TaskSucceeded was journaled.
        assert life.returncode == 0 or life.killed, trace
        assert life.after.status == "SUCCEEDED", trace


def test_no_node_journaled_before_a_process_started_is_fetched_by_it(
    report: KillReport,
) -> None:
    """A resumed process never calls the LLM for a node whose children the log already held."""
    for life in report.lives:
        again = set(life.calls) & set(life.before.children)
        assert not again, f"{life.describe()} fetched {sorted(again)[:5]}\n{report.trace()}"


def test_calls_after_each_resume_are_bounded_by_what_was_left(report: KillReport) -> None:
    """Each process makes no more calls than the nodes not yet journaled when it started, plus
    ``concurrency`` (the calls in flight when the previous process was killed)."""
    total = len(report.clean_tree)
    for life in report.lives:
        left = total - len(life.before.children)
        assert len(life.calls) <= left + CONCURRENCY, f"{life.describe()}\n{report.trace()}"
