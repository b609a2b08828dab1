"""Event log throughput: append and replay into projections, beside raw limits and eventsourcing.

Run it from the project root (``make bench`` does)::

    .venv/bin/python bench/bench_log.py            # 200,000 events, median of 3 rounds
    .venv/bin/python bench/bench_log.py --events 20000 --reps 1 --no-eventsourcing

Everything is measured in one run on the same events and printed with the machine it ran on:

1. raw limit A: a bare loop of msgpack pack + ``<II`` length/crc32 framing + buffered file write
   (of payloads already shaped as ``[seq, tag, version, fields]``), one fsync at the end;
2. our append with the default ``batch`` fsync: ``EventLog.append`` one event at a time,
   ``EventLog.append_many`` in batches of 100 (how the journal actor drains its mailbox), and
   ``EventStore.append`` in batches of 100 (log + projection fold), without snapshots and with
   one every 20,000 events (the default); for scale, ``fsync=always`` once on 20,000 events;
3. raw limit B: a bare loop over the same bytes of frame unpack + crc32 check + msgpack unpack;
4. our replay into projections: ``Projection().apply_all(EventLog(readonly=True).read())``, and
   a fresh ``EventStore`` open with no snapshot (lock, validation scan, full replay); then, once,
   the time to write a snapshot of the whole projection and to open from it;
5. the ``eventsourcing`` library with its SQLite module (a file database in WAL mode, which
   syncs every commit), one ``save`` per event, and its replay: ``repository.get`` of every
   aggregate from a fresh application (decode + fold, the like of ours), and for scale a read of
   the raw notification rows. When all events would take over a minute it runs on the first
   20,000 and says so; rates are per event either way.

Our runs and the raw loops are interleaved (one round of each per repetition) and the median of
the rounds is kept; eventsourcing runs once. Each task is a block of 4,000 ``ChildrenFetched``
events (a full refresh has ~3,200 nodes) after one ``TaskCreated``, so that the fold does real
work; every path is distinct. The garbage collector is paused inside every timed loop alike.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import shutil
import statistics
import struct
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

import msgpack

from events import DEFAULT_CODEC, ChildrenFetched, Event, Projection, TaskCreated
from store import HEADER_SIZE, EventLog, EventStore, snapshot_path

PER_TASK = 4_000
HOSPITALS = ("中山大学附属第三医院", "广东省人民医院", "广州市第一人民医院")
TARGET_RAW = 0.40
TARGET_ES = 10.0
ES_BUDGET_S = 60.0
ES_SUBSET = 20_000
ES_PROBE = 2_000


def make_events(n: int) -> list[Event]:
    """``n`` ChildrenFetched events in tasks of PER_TASK, each task opened by a TaskCreated."""
    events: list[Event] = []
    at = 1_750_000_000.0
    for i in range(n):
        j = i % PER_TASK
        task_id = str(uuid.UUID(int=i // PER_TASK + 1))
        if j == 0:
            events.append(
                TaskCreated(task_id=task_id, task_type="province", target="广东省", at=at)
            )
        events.append(
            ChildrenFetched(
                task_id=task_id,
                level="hospital",
                path=("广东省", "广州市", f"天河区{j:04d}"),
                children=HOSPITALS,
                at=at + i * 0.001,
            )
        )
    return events


def median_times(reps: int, runs: dict[str, Callable[[], float]]) -> dict[str, float]:
    """The median of ``reps`` timings of each run (each run times its own hot part).

    The runs are interleaved, one round of all of them per repetition, so that a burst of noise
    from the rest of the machine hits every contestant alike rather than one of them.
    """
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(reps):
        for name, run in runs.items():
            gc.collect()
            times[name].append(run())
    return {name: statistics.median(values) for name, values in times.items()}


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Keep the cyclic collector out of a timed loop (the same for every contestant)."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


# Raw limits.


def raw_append(objs: list[list[object]], path: Path) -> float:
    """Raw limit A: pack + frame + buffered write of ready-made payload objects."""
    pack = msgpack.Packer(use_bin_type=True).pack
    head = struct.Struct("<II").pack
    crc32 = zlib.crc32
    with gc_paused(), open(path, "wb") as f:
        write = f.write
        started = time.perf_counter()
        for obj in objs:
            payload = pack(obj)
            write(head(len(payload), crc32(payload)))
            write(payload)
        f.flush()
        os.fsync(f.fileno())
        return time.perf_counter() - started


def raw_replay(path: Path, expected: int) -> float:
    """Raw limit B: read the file, then per frame unpack the head, check crc32, unpack msgpack."""
    unpack_head = struct.Struct("<II").unpack_from
    crc32 = zlib.crc32
    unpackb = msgpack.unpackb
    with gc_paused():
        started = time.perf_counter()
        data = path.read_bytes()
        buf = memoryview(data)
        offset, end, count = 0, len(data), 0
        while offset < end:
            length, crc = unpack_head(buf, offset)
            payload = buf[offset + 8 : offset + 8 + length]
            if crc32(payload) != crc:
                raise ValueError(f"bad crc at {offset}")
            unpackb(payload, use_list=False, raw=False, strict_map_key=False)
            offset += 8 + length
            count += 1
        elapsed = time.perf_counter() - started
    if count != expected:
        raise AssertionError(f"raw replay read {count} frames, expected {expected}")
    return elapsed


# Ours.


def fresh(path: Path) -> None:
    for p in (path, Path(f"{path}.lock"), Path(snapshot_path(str(path)))):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def ours_append_one(events: list[Event], path: Path) -> float:
    """EventLog.append, one event per call, batch fsync; close (the final fsync) included."""
    fresh(path)
    with gc_paused():
        log = EventLog(path, fsync="batch")
        started = time.perf_counter()
        append = log.append
        for event in events:
            append(event)
        log.close()
        return time.perf_counter() - started


def ours_append_always(events: list[Event], path: Path) -> float:
    """EventLog.append one at a time with fsync=always: every event on disk before it returns."""
    fresh(path)
    log = EventLog(path, fsync="always")
    started = time.perf_counter()
    for event in events:
        log.append(event)
    log.close()
    return time.perf_counter() - started


def ours_append_many(events: list[Event], path: Path, batch: int = 100) -> float:
    """EventLog.append_many in batches of ``batch``, batch fsync; close included."""
    fresh(path)
    with gc_paused():
        log = EventLog(path, fsync="batch")
        started = time.perf_counter()
        for i in range(0, len(events), batch):
            log.append_many(events[i : i + batch])
        log.close()
        return time.perf_counter() - started


def ours_store_append(
    events: list[Event], path: Path, snapshot_every: int | None, batch: int = 100
) -> float:
    """EventStore.append in batches (log + fold, snapshots as asked); close included."""
    fresh(path)
    with gc_paused():
        store = EventStore(path, fsync="batch", snapshot_every=snapshot_every)
        started = time.perf_counter()
        for i in range(0, len(events), batch):
            store.append(events[i : i + batch])
        store.close()
        return time.perf_counter() - started


def ours_replay_readonly(path: Path, expected: int) -> float:
    """Open read-only (validating every frame), decode every event, fold into a Projection."""
    with gc_paused():
        started = time.perf_counter()
        with EventLog(path, readonly=True) as log:
            projection = Projection().apply_all(log.read())
        elapsed = time.perf_counter() - started
    if projection.events_applied != expected:
        raise AssertionError(f"replayed {projection.events_applied}, expected {expected}")
    return elapsed


def ours_replay_store(path: Path, expected: int) -> float:
    """A fresh EventStore open with no snapshot: lock, validate, full replay into projections."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(snapshot_path(str(path)))
    with gc_paused():
        started = time.perf_counter()
        store = EventStore(path, snapshot_every=None)
        elapsed = time.perf_counter() - started
        replayed = store.events_replayed
        store.log.close()
    if replayed != expected:
        raise AssertionError(f"store replayed {replayed}, expected {expected}")
    return elapsed


def ours_snapshot(path: Path, expected: int) -> dict[str, float]:
    """Once: write a snapshot of the fully replayed projection, then open from it."""
    with EventStore(path, snapshot_every=None) as store:
        started = time.perf_counter()
        store.snapshot()
        write_s = time.perf_counter() - started
        store.log.close()
    size = os.path.getsize(snapshot_path(str(path)))
    started = time.perf_counter()
    store = EventStore(path, snapshot_every=None)
    open_s = time.perf_counter() - started
    used, applied = store.snapshot_used, store.projection.events_applied
    store.log.close()
    if not used or applied != expected:
        raise AssertionError(f"snapshot open: used={used}, events_applied={applied}")
    return {"write_s": write_s, "open_s": open_s, "bytes": size}


# eventsourcing.


def eventsourcing_run(events: list[Event], workdir: Path) -> dict[str, object]:
    """One save per event into eventsourcing's SQLite module, then replay every aggregate."""
    from eventsourcing.application import Application
    from eventsourcing.domain import Aggregate, event

    class Task(Aggregate):
        @event("Created")
        def __init__(self, task_id: str, task_type: str, target: str | None, at: float) -> None:
            self.task_id = task_id
            self.children: dict[str, list[str]] = {}
            self.hospitals = 0

        @event("ChildrenFetched")
        def children_fetched(self, level: str, path: list[str], children: list[str], at: float):
            self.children[" / ".join(path)] = children
            self.hospitals += len(children)

    class Refresh(Application):
        pass

    env = {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(workdir / "eventsourcing.sqlite"),
    }
    app = Refresh(env=env)
    aggregates: dict[str, Task] = {}
    limit = len(events)
    scaled = False
    count = 0
    started = time.perf_counter()
    for e in events:
        if count >= limit:
            break
        if isinstance(e, TaskCreated):
            agg = aggregates[e.task_id] = Task(e.task_id, e.task_type, e.target, e.at)
        else:
            agg = aggregates[e.task_id]
            agg.children_fetched(e.level, list(e.path), list(e.children), e.at)
        app.save(agg)
        count += 1
        if count == ES_PROBE and not scaled:
            rate = count / (time.perf_counter() - started)
            if len(events) / rate > ES_BUDGET_S and len(events) > ES_SUBSET:
                limit, scaled = ES_SUBSET, True
    append_s = time.perf_counter() - started
    expected_hospitals = sum(a.hospitals for a in aggregates.values())
    ids = [a.id for a in aggregates.values()]
    del app, aggregates

    reader = Refresh(env=env)
    started = time.perf_counter()
    hospitals = sum(reader.repository.get(i).hospitals for i in ids)
    replay_s = time.perf_counter() - started
    if hospitals != expected_hospitals:
        raise AssertionError(f"eventsourcing replay found {hospitals} hospitals")

    started = time.perf_counter()
    rows, start = 0, 1
    while page := reader.recorder.select_notifications(start=start, limit=10_000):
        rows += len(page)
        start = page[-1].id + 1
    rows_s = time.perf_counter() - started
    if rows != count:
        raise AssertionError(f"eventsourcing has {rows} notifications, expected {count}")
    return {
        "events": count,
        "scaled": scaled,
        "append_s": append_s,
        "replay_s": replay_s,
        "rows_s": rows_s,
    }


# Report.


def machine() -> str:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} cores{f' ({cpu})' if cpu else ''}, Python {platform.python_version()}, "
        f"{platform.platform()}"
    )


def filesystem(path: Path) -> str:
    """The filesystem type holding ``path`` (from /proc/mounts), for the record."""
    best, kind = "", "?"
    with contextlib.suppress(OSError):
        real = str(path.resolve())
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and real.startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    return kind


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="ChildrenFetched events")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (the median is kept)")
    parser.add_argument("--dir", help="where to make the temporary directory (default: $TMPDIR)")
    parser.add_argument("--no-eventsourcing", action="store_true", help="skip eventsourcing")
    args = parser.parse_args(argv)

    events = make_events(args.events)
    total = len(events)
    objs = [
        [seq, type(e).TYPE, type(e).VERSION, {f: getattr(e, f) for f in e.__dataclass_fields__}]
        for seq, e in enumerate(events, 1)
    ]
    payload_size = len(DEFAULT_CODEC.encode(events[1], total))
    n_always = min(ES_SUBSET, total)
    workdir = Path(tempfile.mkdtemp(prefix="hr-bench-", dir=args.dir))
    try:
        raw_path = workdir / "raw.bin"
        log_path = workdir / "bench.hrlog"
        t = median_times(
            args.reps,
            {
                "raw_a": lambda: raw_append(objs, raw_path),
                "one": lambda: ours_append_one(events, log_path),
                "many": lambda: ours_append_many(events, log_path),
                "store_nosnap": lambda: ours_store_append(events, log_path, None),
                "store": lambda: ours_store_append(events, log_path, 20_000),
                "raw_b": lambda: raw_replay(raw_path, total),
                "ro": lambda: ours_replay_readonly(log_path, total),
                "open": lambda: ours_replay_store(log_path, total),
            },
        )
        log_bytes = log_path.stat().st_size - HEADER_SIZE
        snap = ours_snapshot(log_path, total)
        t["always"] = ours_append_always(events[:n_always], workdir / "always.hrlog")
        es = None if args.no_eventsourcing else eventsourcing_run(events, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    r = {name: total / seconds for name, seconds in t.items()}
    r["always"] = n_always / t["always"]
    w = 64

    def row(label: str, value: float, base: str | None = None) -> None:
        ratio = f"  {value / r[base]:4.0%} of raw {base[-1].upper()}" if base else ""
        print(f"  {label:<{w}} {value:>9,.0f}{ratio}")

    print("hospital-refresh event log benchmark")
    print(
        f"events:  {args.events:,} ChildrenFetched + {total - args.events} TaskCreated (one per "
        f"{PER_TASK:,}-event task) = {total:,} frames; payload ~{payload_size} B, "
        f"{log_bytes / total:.0f} B/frame on disk"
    )
    print(f"machine: {machine()}")
    print(f"disk:    temp dir on {filesystem(workdir.parent)}; msgpack {msgpack.version}")
    print(f"runs:    median of {args.reps} interleaved rounds for ours and the raw loops")
    print()
    print("append (events/s)")
    row("raw A: msgpack pack + <II crc32 frame + buffered write", r["raw_a"])
    row("EventLog.append, one at a time (fsync=batch)", r["one"], "raw_a")
    row("EventLog.append_many, batches of 100 (fsync=batch)", r["many"], "raw_a")
    row("EventStore.append, batches of 100, log + fold, no snapshots", r["store_nosnap"], "raw_a")
    row("EventStore.append, batches of 100, log + fold + snapshot/20k", r["store"], "raw_a")
    row(f"EventLog.append, one at a time (fsync=always), {n_always:,} ev, once", r["always"])
    es_append = es_replay = None
    if es is not None:
        es_n = int(es["events"])  # type: ignore[call-overload]
        es_append = es_n / float(es["append_s"])  # type: ignore[arg-type]
        es_replay = es_n / float(es["replay_s"])  # type: ignore[arg-type]
        es_rows = es_n / float(es["rows_s"])  # type: ignore[arg-type]
        version = metadata.version("eventsourcing")
        row(f"eventsourcing {version} SQLite (WAL), one save per event, once", es_append)
    print()
    print("replay into projections (events/s)")
    row("raw B: <II unpack + crc32 check + msgpack unpack", r["raw_b"])
    row("Projection().apply_all(EventLog(readonly=True).read())", r["ro"], "raw_b")
    row("EventStore open, no snapshot (lock + validate + full replay)", r["open"], "raw_b")
    if es is not None and es_replay is not None:
        row("eventsourcing repository.get of every aggregate (decode+fold)", es_replay)
        row("eventsourcing select_notifications (rows only, no decoding)", es_rows)
        if es["scaled"]:
            print(
                f"  (eventsourcing ran on the first {es_n:,} events: all {total:,} would take "
                f"over {ES_BUDGET_S:.0f} s; rates are per event, so they compare)"
            )
    print()
    print(
        f"snapshot of the whole projection: {snap['bytes'] / 1e6:.1f} MB written in "
        f"{snap['write_s'] * 1e3:.0f} ms; open from it {snap['open_s'] * 1e3:.0f} ms "
        f"(full replay {t['open'] * 1e3:.0f} ms)"
    )
    print()
    print("targets")
    checks = [
        (f"append one at a time >= {TARGET_RAW:.0%} of raw A", r["one"] / r["raw_a"], TARGET_RAW),
        (f"append batches of 100 >= {TARGET_RAW:.0%} of raw A", r["many"] / r["raw_a"], TARGET_RAW),
        (f"replay (read-only) >= {TARGET_RAW:.0%} of raw B", r["ro"] / r["raw_b"], TARGET_RAW),
        (f"replay (store open) >= {TARGET_RAW:.0%} of raw B", r["open"] / r["raw_b"], TARGET_RAW),
    ]
    if es_append is not None and es_replay is not None:
        checks += [
            (f"append one at a time >= {TARGET_ES:.0f}x eventsourcing", r["one"] / es_append, 10),
            (f"replay (store open) >= {TARGET_ES:.0f}x eventsourcing", r["open"] / es_replay, 10),
        ]
    for label, ratio, target in checks:
        shown = f"{ratio:.0%}" if target < 1 else f"{ratio:.1f}x"
        print(f"  {label:<{w - 7}} {shown:>7}  {verdict(ratio >= target)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
