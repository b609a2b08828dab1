"""A full refresh through the actor system, beside the guide's own asyncio design, same data.

Run it from the project root::

    .venv/bin/python bench/bench_refresh.py            # 3 repetitions, median reported
    .venv/bin/python bench/bench_refresh.py --quick    # 1 repetition

Every measurement runs in a fresh subprocess (``--one IMPL LATENCY_MS``, which prints one JSON
line), so that peak RSS and peak threads belong to that run alone and runs do not disturb each
other. Repetitions are interleaved (one round of every configuration per repetition) so that
noise from the rest of the machine hits both implementations alike.

Both implementations refresh the whole country (34 provinces, ~333 cities, ~2,845 districts:
~3,259 LLM calls) from the same ``SimulatedLLMService(latency_ms=(L, L), seed=0)`` through
``fetch_children(path)``, at most 5 calls in flight:

- ours: ``tasks.TaskManager`` on a fresh event log in a temp dir (``$HOSPITAL_REFRESH_LOG``),
  default settings (fsync "batch", journaling every event); wall time is from ``start_task``
  to SUCCEEDED (``wait_for_task``); calls from ``pool_stats()``, checked against the service.
- reference: the guide's design, "全量刷新流程" with ``asyncio.Semaphore(5)`` around each call:
  get provinces; per province get cities; per city districts; per district hospitals. The
  nested loops are made concurrent with one ``asyncio.gather`` per node over its children
  (recursively, so the whole tree is in flight at once, not level by level with a barrier);
  the guide's retry wrapper and an in-memory progress/status dict; results kept in memory as
  nested dicts; no journaling.

Measured: at 20 ms per call, wall time against the ideal ``calls x 20 ms / 5`` (pool
utilization, target >= 95%); at 0 ms, LLM calls per second end to end (target >= 3,000/s for
ours, journaling on); peak threads (``threading.active_count()`` sampled every 10 ms, the
sampler thread and the main thread included; target <= 32); peak RSS (VmHWM of the subprocess,
with its RSS after imports for scale). Both trees are hashed (every province/city/district/
hospital row) to prove the data is identical.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

CONCURRENCY = 5
LATENCIES_MS = (20, 0)
IMPLS = ("ours", "reference")
TARGET_UTILIZATION = 0.95
TARGET_CALLS_PER_S = 3_000
TARGET_THREADS = 32
RUN_TIMEOUT_S = 180
MARK = "BENCH_RESULT "


# --- measuring inside one subprocess -------------------------------------------------------


def proc_status_kib(field: str) -> int:
    """A ``VmHWM``/``VmRSS``-style field of /proc/self/status in KiB (0 where unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    if field == "VmHWM":
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return 0


class ThreadSampler:
    """Samples ``threading.active_count()`` every ``interval`` seconds from its own thread."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.peak = threading.active_count()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        self.samples += 1
        self.peak = max(self.peak, threading.active_count())

    def __enter__(self) -> ThreadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sample()
        self._stop.set()
        self._thread.join()


def rows_digest(rows: Iterable[tuple[str, ...]]) -> tuple[int, str]:
    """How many (province, city, district, hospital) rows, and a hash of them sorted."""
    ordered = sorted(rows)
    h = hashlib.sha256()
    for row in ordered:
        h.update("\x1f".join(row).encode())
        h.update(b"\x1e")
    return len(ordered), h.hexdigest()[:16]


def nested_rows(tree: dict[str, Any] | None, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Rows of a nested ``{name: {...} | None}`` tree, leaves at depth 4 (hospitals)."""
    rows: list[tuple[str, ...]] = []
    for name, sub in (tree or {}).items():
        path = (*prefix, name)
        if isinstance(sub, dict) and sub:
            rows.extend(nested_rows(sub, path))
        else:
            rows.append(path)
    return rows


async def run_ours(service: Any, log_path: str, sampler: ThreadSampler) -> dict[str, Any]:
    """A full refresh through TaskManager; wall from start_task to SUCCEEDED."""
    from tasks import Settings, TaskManager

    # Settings() ignores any hospital-refresh.toml and HOSPITAL_REFRESH_* tuning, so the
    # figures are those of the defaults (fsync "batch"); the log path is the temp one.
    async with TaskManager(
        log_path, service, concurrency=CONCURRENCY, settings=Settings()
    ) as manager:
        sampler.sample()
        task_id = await manager.create_refresh_task("full")
        started = time.perf_counter()
        await manager.start_task(task_id)
        status = await manager.wait_for_task(task_id, timeout=RUN_TIMEOUT_S)
        wall = time.perf_counter() - started
        sampler.sample()
        stats = await manager.pool_stats()
        tree = await manager.get_task_tree(task_id)
        fsync = manager.settings.fsync
    assert tree is not None
    count, digest = rows_digest(nested_rows(tree["children"]))
    return {
        "status": status["status"],
        "wall_s": wall,
        "calls": stats["calls"],
        "retries": stats["retries"],
        "peak_in_flight": stats["peak_in_flight"],
        "rows": count,
        "digest": digest,
        "fsync": fsync,
        "log_bytes": os.path.getsize(log_path),
    }


async def guide_full_refresh(service: Any, concurrency: int = CONCURRENCY) -> dict[str, Any]:
    """The guide's "全量刷新流程": nested loops, ``asyncio.Semaphore(5)`` around each LLM call.

    Each level's loop is an ``asyncio.gather`` over the node's children, so every branch runs
    concurrently and the semaphore alone bounds the calls in flight. Results stay in memory.
    """
    semaphore = asyncio.Semaphore(concurrency)
    status = {"progress": 0, "current_step": "", "calls": 0}
    max_retries = 3

    async def safe_call_with_retry(path: tuple[str, ...]) -> list[str]:
        for attempt in range(max_retries + 1):
            try:
                async with semaphore:
                    names = await service.fetch_children(path)
                status["calls"] += 1
                status["current_step"] = " / ".join(path) or "省份列表"
                return names
            except Exception:
                if attempt == max_retries:
                    raise
                await asyncio.sleep(2**attempt)
        raise AssertionError("unreachable")

    async def refresh_city(path: tuple[str, ...]) -> dict[str, Any]:
        districts = await safe_call_with_retry(path)
        hospitals = await asyncio.gather(*(safe_call_with_retry((*path, d)) for d in districts))
        return {d: dict.fromkeys(h) for d, h in zip(districts, hospitals, strict=True)}

    async def refresh_province(path: tuple[str, ...]) -> dict[str, Any]:
        cities = await safe_call_with_retry(path)
        subtrees = await asyncio.gather(*(refresh_city((*path, c)) for c in cities))
        return dict(zip(cities, subtrees, strict=True))

    provinces = await safe_call_with_retry(())
    subtrees = await asyncio.gather(*(refresh_province((p,)) for p in provinces))
    status["progress"] = 100
    return {"tree": dict(zip(provinces, subtrees, strict=True)), "calls": status["calls"]}


async def run_reference(service: Any, sampler: ThreadSampler) -> dict[str, Any]:
    started = time.perf_counter()
    result = await guide_full_refresh(service)
    wall = time.perf_counter() - started
    sampler.sample()
    count, digest = rows_digest(nested_rows(result["tree"]))
    return {
        "status": "SUCCEEDED",
        "wall_s": wall,
        "calls": result["calls"],
        "retries": 0,
        "rows": count,
        "digest": digest,
    }


def one_run(impl: str, latency_ms: float) -> None:
    """Child process: one full refresh, one JSON line on stdout (prefixed by MARK)."""
    if impl == "ours":
        import tasks  # noqa: F401  (imported before the baseline, as the reference imports llm)
    from llm import Divisions, SimulatedLLMService

    Divisions.load()
    rss_after_imports = proc_status_kib("VmRSS")

    class TimedService(SimulatedLLMService):
        """Measures how long each call really takes (the sleep overshoots its 20 ms)."""

        busy_s = 0.0
        lock = threading.Lock()

        async def fetch_children(self, path: Sequence[str]) -> list[str]:
            start = time.perf_counter()
            try:
                return await super().fetch_children(path)
            finally:
                with self.lock:
                    self.busy_s += time.perf_counter() - start

    # Timing every call costs a few per cent at 0 ms, where it tells nothing: time only at 20 ms.
    kind = TimedService if latency_ms else SimulatedLLMService
    service = kind(latency_ms=(latency_ms, latency_ms), seed=0)
    with ThreadSampler() as sampler:
        if impl == "ours":
            log_path = os.environ.get("HOSPITAL_REFRESH_LOG") or os.path.join(
                tempfile.mkdtemp(prefix="bench-refresh-"), "events.hrlog"
            )
            os.environ["HOSPITAL_REFRESH_LOG"] = log_path
            result = asyncio.run(run_ours(service, log_path, sampler))
        else:
            result = asyncio.run(run_reference(service, sampler))
    calls = result["calls"]
    wall = result["wall_s"]
    ideal = calls * latency_ms / 1000 / CONCURRENCY
    result.update(
        impl=impl,
        latency_ms=latency_ms,
        service_calls=service.calls,
        ideal_s=ideal,
        utilization=ideal / wall if ideal else None,
        mean_call_ms=getattr(service, "busy_s", 0.0) / calls * 1000,
        slots_busy=getattr(service, "busy_s", 0.0) / (wall * CONCURRENCY),
        calls_per_s=calls / wall,
        peak_threads=sampler.peak,
        thread_samples=sampler.samples,
        rss_after_imports_kib=rss_after_imports,
        peak_rss_kib=proc_status_kib("VmHWM"),
    )
    leftover = [
        t.name for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon
    ]
    result["threads_left_after_close"] = leftover
    print(MARK + json.dumps(result, ensure_ascii=False), flush=True)
    if leftover:  # report it, but never hang the benchmark on a leaked actor thread
        sys.stderr.flush()
        os._exit(0)


# --- the parent: spawn, collect, report ----------------------------------------------------


def spawn(impl: str, latency_ms: float, tmp: str, n: int) -> dict[str, Any]:
    env = dict(os.environ)
    env["HOSPITAL_REFRESH_LOG"] = os.path.join(tmp, f"run{n:02d}-{impl}-{latency_ms:g}ms.hrlog")
    cmd = [sys.executable, os.path.abspath(__file__), "--one", impl, f"{latency_ms:g}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK) :])
    raise RuntimeError(
        f"{impl} at {latency_ms:g} ms gave no result (exit {proc.returncode}):\n"
        f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    )


def machine() -> list[str]:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return [
        f"machine: nproc={os.cpu_count()}, CPU: {cpu}",
        f"python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.platform()}",
    ]


def med(values: Sequence[float]) -> float:
    return statistics.median(values)


def cell(values: Sequence[float], fmt: str, pick: str = "median") -> str:
    """``median (run1, run2, run3)`` or, for a bound, ``max (runs...)``."""
    head = max(values) if pick == "max" else med(values)
    if len(values) == 1:
        return format(head, fmt)
    return f"{format(head, fmt)} ({', '.join(format(v, fmt) for v in values)})"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        lines.append(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            lines.append("-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one repetition instead of three")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 3)")
    parser.add_argument("--one", nargs=2, metavar=("IMPL", "LATENCY_MS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        impl, latency = args.one
        if impl not in IMPLS:
            parser.error(f"IMPL must be one of {IMPLS}")
        one_run(impl, float(latency))
        return 0

    reps = args.reps or (1 if args.quick else 3)
    load_start = os.getloadavg()
    print("bench_refresh: full refresh, simulated LLM (seed 0), concurrency 5")
    for line in machine():
        print(line)
    print(f"load average at start: {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}")
    if load_start[0] > 1.0:
        print(
            f"WARNING: load average {load_start[0]:.2f} > 1.0 at start: other work is running "
            "on this machine, the figures below are skewed by it"
        )
    print(f"{reps} repetition(s) of each configuration, each in its own subprocess, interleaved")
    print()

    results: dict[tuple[str, float], list[dict[str, Any]]] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-refresh-") as tmp:
        n = 0
        for rep in range(reps):
            for latency in LATENCIES_MS:
                for impl in IMPLS:
                    n += 1
                    r = spawn(impl, latency, tmp, n)
                    results.setdefault((impl, latency), []).append(r)
                    util = f"util {r['utilization']:.1%}" if r["utilization"] else ""
                    left = r.get("threads_left_after_close")
                    print(
                        f"run {rep + 1}/{reps} {impl:<9} {latency:>2g} ms: {r['status']} "
                        f"wall {r['wall_s']:.3f} s, {r['calls']} calls "
                        f"(service {r['service_calls']}, retries {r['retries']}), "
                        f"{r['calls_per_s']:,.0f} calls/s {util}, "
                        f"peak threads {r['peak_threads']}, "
                        f"peak RSS {r['peak_rss_kib'] / 1024:.1f} MiB "
                        f"(after imports {r['rss_after_imports_kib'] / 1024:.1f} MiB), "
                        f"rows {r['rows']} #{r['digest']}"
                        + (f", log {r['log_bytes'] / 1e6:.2f} MB" if "log_bytes" in r else "")
                        + (f", THREADS LEFT AFTER CLOSE: {left}" if left else ""),
                        flush=True,
                    )
    total = time.perf_counter() - started
    load_end = os.getloadavg()

    def col(impl: str, latency: float, key: str) -> list[float]:
        return [r[key] for r in results[(impl, latency)]]

    every = [r for runs in results.values() for r in runs]
    same_data = (
        len({(r["calls"], r["service_calls"], r["rows"], r["digest"]) for r in every}) == 1
        and all(r["status"] == "SUCCEEDED" for r in every)
        and all(r["retries"] == 0 for r in every)
    )
    calls = every[0]["calls"]

    def shape(impl: str) -> str:
        seen = sorted({(r["calls"], r["rows"], r["digest"]) for r in every if r["impl"] == impl})
        return "; ".join(f"{c} calls, {n} rows #{d}" for c, n, d in seen)

    util_ours = col("ours", 20, "utilization")
    cps_ours = col("ours", 0, "calls_per_s")
    threads_ours = [float(t) for lat in LATENCIES_MS for t in col("ours", lat, "peak_threads")]
    threads_ref = [float(t) for lat in LATENCIES_MS for t in col("reference", lat, "peak_threads")]
    ideal = calls * 20 / 1000 / CONCURRENCY

    rows = [
        ["configuration", "ours", "reference (guide)", "target", "PASS/MISS (ours)"],
        [
            "data: LLM calls, rows, hash",
            shape("ours"),
            shape("reference"),
            "identical, 0 retries",
            verdict(same_data),
        ],
        [
            f"20 ms: wall s (ideal {ideal:.2f})",
            cell(col("ours", 20, "wall_s"), ".2f"),
            cell(col("reference", 20, "wall_s"), ".2f"),
            "",
            "",
        ],
        [
            "20 ms: mean call time ms",
            cell(col("ours", 20, "mean_call_ms"), ".2f"),
            cell(col("reference", 20, "mean_call_ms"), ".2f"),
            "",
            "",
        ],
        [
            "20 ms: slots busy % (measured calls)",
            cell([u * 100 for u in col("ours", 20, "slots_busy")], ".1f"),
            cell([u * 100 for u in col("reference", 20, "slots_busy")], ".1f"),
            "",
            "",
        ],
        [
            "20 ms: pool utilization %",
            cell([u * 100 for u in util_ours], ".1f"),
            cell([u * 100 for u in col("reference", 20, "utilization")], ".1f"),
            f">= {TARGET_UTILIZATION:.0%}",
            verdict(med(util_ours) >= TARGET_UTILIZATION),
        ],
        [
            "0 ms: LLM calls/s end to end",
            cell(cps_ours, ",.0f"),
            cell(col("reference", 0, "calls_per_s"), ",.0f"),
            f">= {TARGET_CALLS_PER_S:,}",
            verdict(med(cps_ours) >= TARGET_CALLS_PER_S),
        ],
        [
            "0 ms: wall s",
            cell(col("ours", 0, "wall_s"), ".3f"),
            cell(col("reference", 0, "wall_s"), ".3f"),
            "",
            "",
        ],
        [
            "peak threads, max of all runs",
            cell(threads_ours, ".0f", "max"),
            cell(threads_ref, ".0f", "max"),
            f"<= {TARGET_THREADS}",
            verdict(max(threads_ours) <= TARGET_THREADS),
        ],
    ]
    for latency in LATENCIES_MS:
        rows.append(
            [
                f"{latency:g} ms: peak RSS MiB",
                cell([k / 1024 for k in col("ours", latency, "peak_rss_kib")], ".1f"),
                cell([k / 1024 for k in col("reference", latency, "peak_rss_kib")], ".1f"),
                "(none)",
                "",
            ]
        )
    rows.append(
        [
            "RSS after imports MiB",
            f"{med([r['rss_after_imports_kib'] / 1024 for r in every if r['impl'] == 'ours']):.1f}",
            f"{med([r['rss_after_imports_kib'] / 1024 for r in every if r['impl'] != 'ours']):.1f}",
            "",
            "",
        ]
    )
    leaks = [r for r in every if r.get("threads_left_after_close")]
    print()
    fsync = next(r["fsync"] for r in every if r["impl"] == "ours")
    print(
        "cells: median (individual runs); peak threads include the main and sampler threads; "
        f"ours: journaling on, fsync {fsync!r}"
    )
    print(table(rows))
    print()
    print(
        f"reference: asyncio, Semaphore({CONCURRENCY}) around each call, nested loops as one "
        "asyncio.gather per node over its children (whole tree concurrent), results in memory"
    )
    if leaks:
        print(f"WARNING: {len(leaks)} run(s) left non-daemon threads after close")
    print(
        f"load average at end: {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}; "
        f"total {total:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
