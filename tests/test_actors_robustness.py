"""The actor system under trouble: a broken listener, a dead worker, a late answer, a race
between cancel and completion, and a stop while requests are still on their way.

To catch the system between two steps without relying on timing, a test can hold the journal
(a query that waits on a gate) so that what it is sent piles up in its inbox.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import ManagerFactory
from fakes import FakeLLMService, make_tree

from actors import ActorSystem, CancelTask
from actors._messages import Append, TaskDrained
from events import ChildrenFetched, TaskCancelled, TaskSucceeded
from llm import SimulatedLLMService
from store import EventLog, live_writer


@contextmanager
def journal_held(system: ActorSystem) -> Iterator[threading.Event]:
    """Keep the journal busy until the block ends (or the yielded gate is set)."""
    gate = threading.Event()
    entered = threading.Event()

    def wait(projection: object) -> None:
        entered.set()
        gate.wait(30)

    system.query(wait)
    assert entered.wait(10), "the journal did not take the holding query"
    try:
        yield gate
    finally:
        gate.set()


def logged_events(log_path: Path) -> list[object]:
    """Every event of the log, in order."""
    with EventLog(log_path, readonly=True) as log:
        return [rec.event for rec in log.read()]


def test_a_raising_progress_callback_does_not_keep_the_task_from_ending(
    open_manager: ManagerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A callback that raises (run on the journal's thread) is logged at ERROR, and the task
    still runs to SUCCEEDED with its status published."""
    caplog.set_level(logging.ERROR, logger="hospital_refresh.view")
    manager = open_manager()
    task_id = asyncio.run(manager.create_refresh_task("province", "北京市"))
    seen: list[int] = []

    def broken(progress: int, step: str) -> None:
        seen.append(progress)
        raise ZeroDivisionError("a bug in the user's callback")

    manager.add_progress_callback(task_id, broken)
    assert asyncio.run(manager.start_task(task_id))
    status = asyncio.run(manager.wait_for_task(task_id, timeout=30))
    assert status["status"] == "SUCCEEDED"
    assert seen[-1] == 100
    assert "status listener failed" in caplog.text
    assert "ZeroDivisionError" in caplog.text


def test_a_cancel_arriving_just_after_the_task_drained_is_refused(
    open_manager: ManagerFactory, log_path: Path
) -> None:
    """Once the supervisor has decided a task succeeded, a cancel is refused even before the
    journal has written the decision: the log never holds TaskCancelled after TaskSucceeded."""
    service = FakeLLMService(make_tree(["北京市"]), hold=lambda path: True)
    manager = open_manager(service)
    system = manager.system
    task_id = asyncio.run(manager.create_refresh_task("province", "北京市"))
    assert asyncio.run(manager.start_task(task_id))

    with journal_held(system):
        system.supervisor.tell(TaskDrained(task_id))
        cancel = system.request(system.supervisor, lambda reply: CancelTask(task_id, reply))
        assert cancel.result(timeout=10) is False
        assert manager.get_task_status(task_id)["status"] == "RUNNING"

    assert asyncio.run(manager.wait_for_task(task_id, timeout=10))["status"] == "SUCCEEDED"
    manager.close()
    ended = [
        type(e) for e in logged_events(log_path) if isinstance(e, TaskSucceeded | TaskCancelled)
    ]
    assert ended == [TaskSucceeded]


def test_an_answer_arriving_after_cancel_is_not_journaled(
    open_manager: ManagerFactory, log_path: Path, make_events
) -> None:
    """A fetched list that reaches the journal after its task was cancelled is left out of the
    log, so a CANCELLED task's tree stays as it was at the cancel."""
    manager = open_manager()
    task_id = asyncio.run(manager.create_refresh_task("province", "北京市"))
    assert asyncio.run(manager.cancel_task(task_id))
    tree_before = asyncio.run(manager.get_task_tree(task_id))

    written: Future[list[object]] = Future()
    late = make_events.fetched(task_id, ("北京市",), ("北京市",))
    manager.system.journal.tell(Append((late,), written))
    assert written.result(timeout=10) == []
    assert asyncio.run(manager.get_task_tree(task_id)) == tree_before
    manager.close()
    assert not any(isinstance(e, ChildrenFetched) for e in logged_events(log_path))


def test_a_stopped_fetch_actor_loses_no_call(open_manager: ManagerFactory) -> None:
    """A call handed to a fetch actor that has stopped goes back to the queue for another, so
    the task still completes with every node fetched."""
    manager = open_manager(concurrency=2)
    manager.system.workers[0].stop(block=True)
    task_id = asyncio.run(manager.create_refresh_task("province", "北京市"))
    assert asyncio.run(manager.start_task(task_id))
    status = asyncio.run(manager.wait_for_task(task_id, timeout=30))
    assert status["status"] == "SUCCEEDED"
    assert status["counts"]["districts"] == 16  # every district of 北京市 in the packaged data
    assert status["failed_paths"] == []


def test_stop_answers_every_request_even_with_a_busy_journal(log_path: Path) -> None:
    """Stopping while the journal is busy returns after the timeout without raising; a request
    still queued is failed with a clear error rather than left waiting forever; the journal
    closes the log once it gets through its inbox."""
    system = ActorSystem(log_path, SimulatedLLMService(latency_ms=(0, 0)))
    with journal_held(system) as gate:
        pending = system.query(lambda projection: len(projection.tasks))
        system.stop(timeout=0.3)
        with pytest.raises(RuntimeError, match="stopped before answering; the request may or"):
            pending.result(timeout=1)
        late = system.query(lambda projection: 0)
        with pytest.raises(RuntimeError, match="the actor system has stopped"):
            late.result(timeout=1)
        gate.set()
    deadline = time.monotonic() + 10
    while live_writer(str(log_path)) is not None:  # until the journal has closed the log
        assert time.monotonic() < deadline, "the journal never closed the log"
        time.sleep(0.01)
    with EventLog(log_path) as log:
        assert log.next_seq == 1
