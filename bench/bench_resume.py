"""The kill-test figures: a full refresh SIGKILLed at random moments and resumed each time.

Run it from the project root::

    .venv/bin/python bench/bench_resume.py               # 30 kills, seed 1
    .venv/bin/python bench/bench_resume.py --kills 60 --seed 7 --keep

Part 1 (kills) runs the kill test's driver (``tests/killable_refresh.py``): one clean full
refresh for reference, then chains of ``hospital-refresh run`` / ``resume --all`` processes on
the simulated backend (1-3 ms per call, a snapshot every 50 events), each SIGKILLed at a random
moment, until ``--kills`` kills were made; the last process of each chain runs to the end.
Every process writes one line per LLM call start to a side file (O_APPEND), so the calls of
killed processes are counted too. Printed:

- trials (processes started) and kills, with how many landed in start-up (before any call) and
  during a snapshot write (its temporary file was left behind);
- successful resumes: resume processes that got as far as journaling ``TaskResumed``;
- nodes lost: nodes of the clean run missing from (or different in) a chain's final tree (must
  be 0);
- calls repeated: calls made minus distinct nodes fetched, i.e. calls whose answer a kill
  lost before it was journaled (at-least-once per node); and the worst process against the
  bound "calls <= nodes not yet journaled when it started + concurrency".

Part 2 (replay) times the way back for the full-refresh log of the clean run (~3,400 events):
``EventStore(path, readonly=True)`` with the snapshot and without it, then, on a copy cut just
before its last ``ChildrenFetched`` frames (an interrupted task with all but a few nodes
journaled), ``TaskManager(path)`` (replay + actors) and ``await resume_task(task_id)`` (until
the frontier is handed over), each with and without the snapshot. Median and min of
``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from killable_refresh import CONCURRENCY, KillReport, final_tree, kill_chain  # noqa: E402

from events import ChildrenFetched  # noqa: E402
from llm import SimulatedLLMService  # noqa: E402
from store import EventStore, iter_valid, snapshot_path  # noqa: E402
from tasks import TaskManager  # noqa: E402


def print_kills(report: KillReport) -> None:
    """Part 1: what the kills cost."""
    total = len(report.clean_tree)
    lives = report.lives
    killed = [life for life in lives if life.killed]
    resumes = [life for life in lives if life.command == "resume"]
    lost = 0
    for log, task_id in report.chains:
        tree = final_tree(log, task_id)
        lost += sum(1 for path, kids in report.clean_tree.items() if tree.get(path) != kids)
        lost += len(set(tree) - set(report.clean_tree))
    made = sum(len(life.calls) for life in lives)
    distinct = total * len(report.chains)
    worst = max(len(life.calls) - (total - len(life.before.children)) for life in lives)
    print(f"kill test (seed {report.seed}, {report.seconds:.1f} s)")
    print(
        f"  clean run:           {total} nodes, {len(report.clean.calls)} calls, "
        f"{report.clean.seconds:.2f} s (first call after {report.clean.call_times[0]:.2f} s)"
    )
    print(f"  chains:              {len(report.chains)} (each resumed to SUCCEEDED)")
    print(f"  trials:              {len(lives)} processes")
    print(f"  kills:               {len(killed)} (SIGKILL)")
    print(f"    in start-up:       {sum(not life.calls for life in killed)} (before any call)")
    print(
        f"    in a snapshot:     {sum(life.in_snapshot for life in killed)} "
        "(snapshot temp file left behind)"
    )
    print(
        f"  resumes:             {len(resumes)} started, "
        f"{sum(life.resumed for life in resumes)} journaled TaskResumed, "
        f"{sum(life.returncode == 0 for life in resumes)} ran to the end with exit 0"
    )
    print(f"  nodes lost:          {lost}")
    print(f"  calls made:          {made} for {distinct} distinct nodes")
    print(
        f"  calls repeated:      {made - distinct} "
        f"({(made - distinct) / max(1, len(killed)):.1f} per kill)"
    )
    print(
        f"  worst process:       calls - nodes left at its start = {worst} "
        f"(bound: <= concurrency = {CONCURRENCY})"
    )


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median and min seconds of ``repeat`` calls of ``fn``."""
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs), min(runs)


def print_replay(clean_log: Path, workdir: Path, repeat: int) -> None:
    """Part 2: from open to resumed."""
    _, records, _ = iter_valid(str(clean_log))
    print()
    print(
        f"replay of the full-refresh log ({len(records)} events, "
        f"{clean_log.stat().st_size / 1e6:.2f} MB), median / min of {repeat}"
    )

    bare = workdir / "bare" / "events.hrlog"
    bare.parent.mkdir(exist_ok=True)
    shutil.copyfile(clean_log, bare)

    def open_store(path: Path, expect_snapshot: bool) -> Callable[[], None]:
        def run() -> None:
            with EventStore(path, readonly=True) as store:
                assert store.snapshot_used is expect_snapshot
                assert len(store.projection.tasks) == 1

        return run

    for label, path, snap in (("with snapshot", clean_log, True), ("no snapshot", bare, False)):
        median, best = timed(open_store(path, snap), repeat)
        print(f"  EventStore open, {label:<14} {median * 1e3:8.1f} ms / {best * 1e3:7.1f} ms")

    # An interrupted task: the clean log cut before its last 3 ChildrenFetched frames.
    fetched = [r for r in records if isinstance(r.event, ChildrenFetched)]
    cut = fetched[-3].offset
    task_id = records[0].event.task_id
    interrupted = workdir / "interrupted.hrlog"
    interrupted.write_bytes(clean_log.read_bytes()[:cut])
    with EventStore(interrupted) as store:
        store.snapshot()
        state = store.projection.tasks[task_id]
        print(
            f"  interrupted copy:    {store.projection.events_applied} events, "
            f"{len(state.children)} nodes journaled, {len(state.frontier())} in the frontier"
        )
    pristine = interrupted.read_bytes()
    pristine_snapshot = Path(snapshot_path(str(interrupted))).read_bytes()

    for label, with_snapshot in (("with snapshot", True), ("no snapshot", False)):
        opens: list[float] = []
        resumes: list[float] = []
        for _ in range(repeat):
            interrupted.write_bytes(pristine)
            snap = Path(snapshot_path(str(interrupted)))
            if with_snapshot:
                snap.write_bytes(pristine_snapshot)
            else:
                snap.unlink(missing_ok=True)
            opened, resumed = asyncio.run(open_and_resume(interrupted, task_id))
            opens.append(opened)
            resumes.append(resumed)
        print(
            f"  TaskManager open,    {label:<14} {statistics.median(opens) * 1e3:8.1f} ms / "
            f"{min(opens) * 1e3:7.1f} ms"
        )
        print(
            f"  resume_task,         {label:<14} {statistics.median(resumes) * 1e3:8.1f} ms / "
            f"{min(resumes) * 1e3:7.1f} ms"
        )
        total = [a + b for a, b in zip(opens, resumes, strict=True)]
        print(
            f"  open to resumed,     {label:<14} {statistics.median(total) * 1e3:8.1f} ms / "
            f"{min(total) * 1e3:7.1f} ms"
        )


async def open_and_resume(path: Path, task_id: str) -> tuple[float, float]:
    """Seconds to open a manager on ``path``, and for ``resume_task`` to return True."""
    started = time.perf_counter()
    manager = TaskManager(path, SimulatedLLMService(latency_ms=(0, 0)))
    opened = time.perf_counter()
    try:
        assert manager.get_task_status(task_id)["interrupted"]  # type: ignore[index]
        assert await manager.resume_task(task_id)
        resumed = time.perf_counter()
        status = await manager.wait_for_task(task_id, timeout=60)
        assert status["status"] == "SUCCEEDED"
    finally:
        await manager.aclose()
    return opened - started, resumed - opened


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=30, help="SIGKILLs to make (default 30)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the kill plan (default 1)")
    parser.add_argument("--repeat", type=int, default=7, help="replay timing runs (default 7)")
    parser.add_argument("--keep", action="store_true", help="keep the logs and side files")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-resume-"))
    try:
        report = kill_chain(workdir / "kills", min_kills=args.kills, seed=args.seed)
        print_kills(report)
        print_replay(workdir / "kills" / "clean.hrlog", workdir, args.repeat)
    finally:
        if args.keep:
            print(f"\nfiles kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
