"""The main job: run one refresh to the end, show its progress, print a summary.

A live bar (rich) on a terminal; plain lines otherwise, one per percent gained, so a log file or
CI output stays readable. Ctrl-C cancels the task cleanly: the cancel is journaled, the actors
stop, the log is flushed, and the exit code is 130.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from ._config import Settings
from ._manager import TaskManager

EXIT_SUCCEEDED = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def run_refresh(settings: Settings, province: str | None, *, plain: bool = False) -> int:
    """Run a full refresh (or ``province``) with ``settings``; the process exit code."""
    return _main(
        lambda use_bar: _run(settings, province, use_bar),
        plain,
        "interrupted: the task was cancelled and the log is consistent",
    )


def _main(job: Callable[[bool], Coroutine[Any, Any, int]], plain: bool, on_interrupt: str) -> int:
    """Run ``job(use_bar)`` on a fresh event loop; Ctrl-C prints ``on_interrupt``, exits 130."""
    use_bar = not plain and sys.stderr.isatty()
    try:
        return asyncio.run(job(use_bar))
    except KeyboardInterrupt:
        print(on_interrupt, file=sys.stderr)
        return EXIT_INTERRUPTED


async def _run(settings: Settings, province: str | None, use_bar: bool) -> int:
    started = time.perf_counter()
    async with TaskManager(settings=settings) as manager:
        task_type = "province" if province else "full"
        task_id = await manager.create_refresh_task(task_type, province)
        show, stop_showing = _progress_display(use_bar, task_id)
        unsubscribe = manager.add_progress_callback(task_id, show)
        try:
            await manager.start_task(task_id)
            status = await manager.wait_for_task(task_id)
        except asyncio.CancelledError:
            await manager.cancel_task(task_id)
            raise
        finally:
            unsubscribe()
            stop_showing()
        stats = await manager.pool_stats()
    _print_summary(status, time.perf_counter() - started, stats, settings)
    return EXIT_SUCCEEDED if status["status"] == "SUCCEEDED" else EXIT_FAILED


def resume_refresh(settings: Settings, task_id: str | None, *, plain: bool = False) -> int:
    """Resume ``task_id`` (or, when None, every interrupted task) and run it to the end.

    Exit 0 when every resumed task SUCCEEDED, 1 otherwise (or when nothing could be resumed).
    """
    return _main(
        lambda use_bar: _resume(settings, task_id, use_bar),
        plain,
        "interrupted: the log is consistent; resume again to carry on",
    )


async def _resume(settings: Settings, task_id: str | None, use_bar: bool) -> int:
    started = time.perf_counter()
    async with TaskManager(settings=settings) as manager:
        wanted = [task_id] if task_id else manager.interrupted_tasks()
        if not wanted:
            print("nothing to resume: no task was interrupted", file=sys.stderr)
            return EXIT_SUCCEEDED
        statuses = []
        for tid in wanted:
            if not await manager.resume_task(tid):
                current = manager.get_task_status(tid)
                what = "unknown task" if current is None else f"status {current['status']}"
                print(f"task {tid} cannot be resumed ({what})", file=sys.stderr)
                return EXIT_FAILED
            show, stop_showing = _progress_display(use_bar, tid)
            unsubscribe = manager.add_progress_callback(tid, show)
            try:
                statuses.append(await manager.wait_for_task(tid))
            finally:
                unsubscribe()
                stop_showing()
        stats = await manager.pool_stats()
    for status in statuses:
        _print_summary(status, time.perf_counter() - started, stats, settings)
    ok = all(s["status"] == "SUCCEEDED" for s in statuses)
    return EXIT_SUCCEEDED if ok else EXIT_FAILED


def _progress_display(
    use_bar: bool, task_id: str
) -> tuple[Callable[[int, str], None], Callable[[], None]]:
    if use_bar:
        bar = Progress(
            TextColumn("[bold]{task.fields[task_id]}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            transient=False,
        )
        handle = bar.add_task("starting", total=100, task_id=task_id)
        bar.start()

        def show_bar(progress: int, step: str) -> None:
            bar.update(handle, completed=progress, description=step)

        return show_bar, bar.stop

    last = [-1]

    def show_line(progress: int, step: str) -> None:
        if progress > last[0]:
            last[0] = progress
            print(f"[{progress:>3}%] {step}", flush=True)

    return show_line, lambda: None


def _print_summary(
    status: dict[str, Any], wall_s: float, stats: dict[str, Any], settings: Settings
) -> None:
    counts = status["counts"]
    calls = stats["calls_by_task"].get(status["task_id"], 0)
    print()
    print(f"task {status['task_id']} {status['status']} in {wall_s:.1f} s")
    print(
        f"  provinces {counts['provinces']}, cities {counts['cities']}, "
        f"districts {counts['districts']}, hospitals {counts['hospitals']}"
    )
    print(f"  LLM calls {calls} ({calls / wall_s:.0f}/s), retries {status['retries']}")
    tokens = status.get("tokens") or {}
    if tokens.get("total"):
        print(
            f"  tokens {tokens['total']} "
            f"(prompt {tokens['prompt']}, completion {tokens['completion']})"
        )
    checked = {k: v for k, v in (status.get("verified") or {}).items() if v["checked"]}
    if checked:
        shares = ", ".join(f"{k} {v['verified']}/{v['checked']}" for k, v in checked.items())
        print(f"  verified against GB/T 2260: {shares}")
        for path in status.get("unverified_paths", []):
            print(f"    unverified: {' / '.join(path)}")
    if status["error"]:
        print(f"  error: {status['error']}")
    failed = status["failed_paths"]
    if failed:
        print(f"  failed nodes ({len(failed)}):")
        for path in failed[:20]:
            print(f"    {' / '.join(path) or '全国'}")
        if len(failed) > 20:
            print(
                f"    ... and {len(failed) - 20} more (hospital-refresh status {status['task_id']})"
            )
    print(f"  log: {settings.log_path}")
