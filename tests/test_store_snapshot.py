"""Snapshots: snapshot + tail equals full replay, and a doubtful snapshot is never trusted."""

from __future__ import annotations

import logging
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import EventFactory

from events import PROJECTION_VERSION, Event, Projection
from store import EventLog, EventStore, Snapshot, read_snapshot, snapshot_path, write_snapshot

STORE_LOGGER = "hospital_refresh.store"


def full_replay(log_path: Path) -> Projection:
    """The projection folded from every event of the log, with no snapshot involved."""
    with EventLog(log_path, readonly=True) as log:
        return Projection().apply_all(log.read())


def crash(store: EventStore) -> None:
    """Close the log the way a crash would leave it: no snapshot on the way out."""
    store.log.close()


def three_tasks(make_events: EventFactory) -> list[Event]:
    """Two finished tasks and one still running, then a cleanup of the first."""
    events = [*make_events("t1"), *make_events("t2", outcome="failed")]
    events += make_events("t3", outcome=None)
    events.append(make_events.cleaned("t1"))
    return events


def test_snapshot_plus_tail_equals_full_replay_at_every_cut(tmp_path: Path, make_events) -> None:
    """Wherever the snapshot is taken, snapshot + the tail after it equals a full replay."""
    events = three_tasks(make_events)
    for cut in range(len(events) + 1):
        path = tmp_path / f"cut{cut}.hrlog"
        store = EventStore(path, snapshot_every=None)
        store.append(events[:cut])
        store.snapshot()
        store.append(events[cut:])
        crash(store)
        with EventStore(path, snapshot_every=None) as reopened:
            assert reopened.snapshot_used
            assert reopened.events_replayed == len(events) - cut
            assert reopened.projection.to_state() == full_replay(path).to_state(), cut
            assert reopened.projection.last_seq == len(events)


def test_store_folds_appends_into_its_projection(log_path: Path, make_events) -> None:
    """Appending through the store updates the projection at once, in step with the log."""
    with EventStore(log_path) as store:
        recorded = store.append(make_events())
        status = store.projection.status("t1")
        assert status is not None
        assert status["status"] == "SUCCEEDED"
        assert store.projection.last_seq == recorded[-1].seq
        assert store.projection.to_state() == full_replay(log_path).to_state()


def test_snapshots_are_taken_every_n_events(log_path: Path, make_events) -> None:
    """With snapshot_every=5, a crash after 12 events replays only the 2 after the last snapshot."""
    events = make_events()
    assert len(events) >= 12
    store = EventStore(log_path, snapshot_every=5)
    for event in events[:12]:
        store.append([event])
    crash(store)
    with EventStore(log_path, snapshot_every=5) as reopened:
        assert reopened.snapshot_used
        assert reopened.events_replayed == 2
        assert reopened.projection.to_state() == full_replay(log_path).to_state()


def test_close_writes_a_snapshot_so_reopen_replays_nothing(log_path: Path, make_events) -> None:
    """A clean close snapshots what is new; the next open replays no event."""
    with EventStore(log_path, snapshot_every=None) as store:
        store.append(three_tasks(make_events))
    with EventStore(log_path) as reopened:
        assert reopened.snapshot_used
        assert reopened.events_replayed == 0
        assert reopened.projection.to_state() == full_replay(log_path).to_state()


def test_missing_snapshot_means_full_replay(
    log_path: Path, make_events, caplog: pytest.LogCaptureFixture
) -> None:
    """With no snapshot file, open replays the whole log quietly."""
    caplog.set_level(logging.WARNING, logger=STORE_LOGGER)
    events = three_tasks(make_events)
    with EventStore(log_path) as store:
        store.append(events)
    os.remove(snapshot_path(str(log_path)))
    with EventStore(log_path) as reopened:
        assert not reopened.snapshot_used
        assert reopened.events_replayed == len(events)
        assert reopened.projection.to_state() == full_replay(log_path).to_state()
    assert caplog.records == []


def snapshot_then(log_path: Path, make_events: EventFactory) -> tuple[list[Event], Path]:
    """A log of three tasks with a snapshot covering all of it; returns the events, snapshot."""
    events = three_tasks(make_events)
    with EventStore(log_path, snapshot_every=None) as store:
        store.append(events)
    snap = Path(snapshot_path(str(log_path)))
    assert snap.exists()
    return events, snap


def rewrite_state(log_path: Path, snap: Path, change: Callable[[dict], dict]) -> None:
    """Rewrite the (valid) snapshot ``snap`` of the log with ``change(state)`` as its state."""
    with EventLog(log_path, readonly=True) as log:
        old = read_snapshot(str(snap), log.log_id, log.fileno, log.size)
    assert old is not None
    state = change(old.state)
    write_snapshot(
        str(snap), Snapshot(old.log_id, old.offset, old.anchor_offset, old.anchor_crc, state)
    )


def assert_ignored(log_path: Path, caplog: pytest.LogCaptureFixture, reason: str) -> None:
    """Opening the store ignores the snapshot with a warning naming ``reason``: full replay."""
    caplog.clear()
    with EventStore(log_path, snapshot_every=None) as store:
        assert not store.snapshot_used
        with EventLog(log_path, readonly=True) as log:
            assert store.events_replayed == sum(1 for _ in log.read())
        assert store.projection.to_state() == full_replay(log_path).to_state()
    assert "ignoring snapshot" in caplog.text
    assert reason in caplog.text


@pytest.mark.parametrize(
    ("where", "reason"),
    [(-1, "checksum mismatch"), (9, "checksum mismatch"), (0, "bad magic")],
    ids=["body-end", "checksum", "magic"],
)
def test_corrupt_snapshot_is_ignored(
    log_path: Path, make_events, caplog: pytest.LogCaptureFixture, where: int, reason: str
) -> None:
    """A snapshot with a flipped byte is ignored with a warning and the log is fully replayed."""
    caplog.set_level(logging.WARNING, logger=STORE_LOGGER)
    _, snap = snapshot_then(log_path, make_events)
    data = bytearray(snap.read_bytes())
    data[where] ^= 0xFF
    snap.write_bytes(bytes(data))
    assert_ignored(log_path, caplog, reason)


def test_truncated_snapshot_is_ignored(
    log_path: Path, make_events, caplog: pytest.LogCaptureFixture
) -> None:
    """A snapshot cut short (or empty) is ignored."""
    caplog.set_level(logging.WARNING, logger=STORE_LOGGER)
    _, snap = snapshot_then(log_path, make_events)
    data = snap.read_bytes()
    snap.write_bytes(data[:5])
    assert_ignored(log_path, caplog, "too short")
    snap.write_bytes(data[: len(data) // 2])
    assert_ignored(log_path, caplog, "checksum mismatch")


def test_snapshot_of_another_log_is_ignored(
    tmp_path: Path, make_events, caplog: pytest.LogCaptureFixture
) -> None:
    """A snapshot copied from another log (another log id) is ignored, even at the same size."""
    caplog.set_level(logging.WARNING, logger=STORE_LOGGER)
    events = make_events()
    for name in ("a", "b"):
        with EventStore(tmp_path / f"{name}.hrlog") as store:
            store.append(events)
    shutil.copyfile(tmp_path / "a.hrlog.snapshot", tmp_path / "b.hrlog.snapshot")
    assert_ignored(tmp_path / "b.hrlog", caplog, "taken of another log")


def test_snapshot_covering_a_lost_tail_is_ignored(
    log_path: Path, make_events, caplog: pytest.LogCaptureFixture
) -> None:
    """A snapshot synced before the log's tail, which a power cut then tore, is ignored."""
    caplog.set_level(logging.WARNING, logger=STORE_LOGGER)
    snapshot_then(log_path, make_events)
    size = log_path.stat().st_size
    os.truncate(log_path, size - 7)
    assert_ignored(log_path, caplog, f"covers {size} bytes")


def test_snapshot_whose_last_frame_was_replaced_is_ignored(
    log_path: Path, make_events, caplog: pytest.LogCaptureFixture
) -> None:
    """If the frame the snapshot ends on was rewritten (same size, other content), it is ignored."""
    caplog.set_level(logging.WARNING, logger=STORE_LOGGER)
    f = make_events
    events = [f.created("t1"), f.started("t1"), f.progress("t1", 10, "step a")]
    with EventStore(log_path, snapshot_every=None) as store:
        recorded = store.append(events)
    size = log_path.stat().st_size
    os.truncate(log_path, recorded[-1].offset)
    with EventLog(log_path) as log:
        log.append(f.progress("t1", 20, "step b"))
    assert log_path.stat().st_size == size
    assert_ignored(log_path, caplog, "no longer holds the frame")
    with EventStore(log_path) as store:
        assert store.projection.tasks["t1"].progress == 20


def test_snapshot_of_an_older_projection_layout_is_ignored(
    log_path: Path, make_events, caplog: pytest.LogCaptureFixture
) -> None:
    """A snapshot whose state has another projection version is ignored, not misread."""
    caplog.set_level(logging.WARNING, logger=STORE_LOGGER)
    _, snap = snapshot_then(log_path, make_events)
    rewrite_state(log_path, snap, lambda state: {**state, "version": PROJECTION_VERSION - 1})
    assert_ignored(log_path, caplog, "version")


def test_after_an_ignored_snapshot_the_next_one_is_good(
    log_path: Path, make_events, caplog: pytest.LogCaptureFixture
) -> None:
    """Once a bad snapshot was ignored, closing writes a trustworthy one again."""
    caplog.set_level(logging.WARNING, logger=STORE_LOGGER)
    _, snap = snapshot_then(log_path, make_events)
    snap.write_bytes(b"garbage")
    with EventStore(log_path) as store:
        store.append([make_events.started("t9")])
    with EventStore(log_path) as store:
        assert store.snapshot_used
        assert store.events_replayed == 0
        assert store.projection.to_state() == full_replay(log_path).to_state()


def test_a_snapshot_that_cannot_be_written_never_fails_an_append(
    log_path: Path, make_events, caplog: pytest.LogCaptureFixture
) -> None:
    """When the snapshot file cannot be replaced, appends and close go on with a warning.

    The events are in the log all the same, and the next open, unable to read the snapshot
    either, replays the whole log.
    """
    caplog.set_level(logging.WARNING, logger=STORE_LOGGER)
    blocker = Path(snapshot_path(str(log_path)))
    blocker.mkdir(parents=True)
    (blocker / "keep").write_text("a directory where the snapshot should go")
    events = three_tasks(make_events)
    with EventStore(log_path, snapshot_every=2) as store:
        for event in events:
            store.append([event])
        assert store.projection.to_state() == full_replay(log_path).to_state()
    assert "could not write snapshot" in caplog.text
    caplog.clear()
    with EventStore(log_path, snapshot_every=None) as store:
        assert not store.snapshot_used
        assert store.events_replayed == len(events)
    assert "unreadable" in caplog.text


def test_a_snapshot_with_a_state_of_the_wrong_shape_is_ignored(
    log_path: Path, make_events, caplog: pytest.LogCaptureFixture
) -> None:
    """A well-formed snapshot whose state is not a projection's is ignored, never a crash."""
    caplog.set_level(logging.WARNING, logger=STORE_LOGGER)
    _, snap = snapshot_then(log_path, make_events)
    for tasks in ([1, 2, 3], {"t1": "x"}):
        rewrite_state(log_path, snap, lambda state, tasks=tasks: {**state, "tasks": tasks})
        assert_ignored(log_path, caplog, "ignoring snapshot")


def test_a_snapshot_that_loads_but_does_not_fold_is_ignored(
    log_path: Path, make_events, caplog: pytest.LogCaptureFixture
) -> None:
    """A snapshot whose state loads but breaks the fold of the tail (a count that is a string)
    is ignored: the store falls back to a full replay instead of failing to open."""
    caplog.set_level(logging.WARNING, logger=STORE_LOGGER)
    f = make_events
    with EventStore(log_path, snapshot_every=None) as store:
        store.append([f.created("t1"), f.started("t1")])
    with EventLog(log_path) as log:
        log.append(f.fetched("t1", ("广东省",), ("广州市",)))

    def bad_count(state: dict) -> dict:
        task = {**state["tasks"]["t1"], "counts": {"province": 0, "city": "many"}}
        return {**state, "tasks": {"t1": task}}

    rewrite_state(log_path, Path(snapshot_path(str(log_path))), bad_count)
    assert_ignored(log_path, caplog, "ignoring snapshot")


def test_a_snapshot_that_cannot_be_encoded_never_fails_an_append(
    log_path: Path, make_events, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Any error while taking a snapshot (not only I/O) is logged; the append stands."""
    caplog.set_level(logging.WARNING, logger=STORE_LOGGER)

    def broken(self: Projection) -> dict:
        raise TypeError("cannot serialize")

    monkeypatch.setattr(Projection, "to_state", broken)
    events = three_tasks(make_events)
    with EventStore(log_path, snapshot_every=1) as store:
        recorded = store.append(events)
    assert len(recorded) == len(events)
    assert "could not write snapshot" in caplog.text
    monkeypatch.undo()
    assert full_replay(log_path).events_applied == len(events)


def test_readonly_store_never_writes_a_snapshot(log_path: Path, make_events) -> None:
    """A read-only store restores state but refuses to snapshot, and close writes none."""
    with EventStore(log_path, snapshot_every=None) as store:
        store.log.append_many(make_events())
    with EventStore(log_path, readonly=True) as store:
        assert store.projection.status("t1") is not None
        with pytest.raises(PermissionError, match="read-only"):
            store.snapshot()
    assert not Path(snapshot_path(str(log_path))).exists()


def test_snapshot_every_must_be_positive(log_path: Path) -> None:
    """snapshot_every below 1 is refused before anything is opened."""
    with pytest.raises(ValueError, match="snapshot_every"):
        EventStore(log_path, snapshot_every=0)
    assert not log_path.exists()


def test_snapshot_file_is_private(log_path: Path, make_events) -> None:
    """The snapshot is created with mode 0600, whatever the umask."""
    old = os.umask(0)
    try:
        snapshot_then(log_path, make_events)
    finally:
        os.umask(old)
    snap = Path(snapshot_path(str(log_path)))
    assert stat.S_IMODE(snap.stat().st_mode) == 0o600
    assert not Path(f"{snap}.tmp").exists()
