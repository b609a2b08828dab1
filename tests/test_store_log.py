"""The event log: append, reopen, replay; torn tails, corruption, one writer, fsync, file mode."""

from __future__ import annotations

import itertools
import logging
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import EventFactory
from hypothesis import given, settings
from hypothesis import strategies as st

import store._log
from events import ChildrenFetched, Event, ProgressChanged, Recorded, TaskCreated, TaskStarted
from store import (
    FSYNC_POLICIES,
    HEADER_SIZE,
    MAGIC,
    EventLog,
    LogCorruptedError,
    LogFormatError,
    LogLockedError,
)

ROOT = Path(__file__).resolve().parents[1]
STORE_LOGGER = "hospital_refresh.store"
FRAME_HEAD = 8


def write(log_path: Path, events: list[Event], **kwargs) -> list[Recorded]:
    """Append ``events`` to a log, closing it afterwards."""
    with EventLog(log_path, **kwargs) as log:
        return log.append_many(events)


def read_all(log_path: Path, **kwargs) -> list[Recorded]:
    """Every recorded event of a log, read through a read-only open."""
    with EventLog(log_path, readonly=True, **kwargs) as log:
        return list(log.read())


def with_big_last_frame(make_events: EventFactory) -> list[Event]:
    """A running task whose last event is a hospital list, so the last frame is a long one."""
    events = make_events(outcome=None)
    events.append(
        make_events.fetched(
            "t1", ("广东省", "广州市", "海珠区"), ("中山大学孙逸仙纪念医院", "广东省第二人民医院")
        )
    )
    return events


# Append, reopen, replay.


def test_append_numbers_events_and_places_frames(log_path: Path, make_events) -> None:
    """Appends get seq 1, 2, 3... and offsets from the end of the header, frame after frame."""
    events = make_events()
    with EventLog(log_path) as log:
        recorded = [log.append(e) for e in events]
        assert log.next_seq == len(events) + 1
        assert log.size == log_path.stat().st_size
    assert [r.seq for r in recorded] == list(range(1, len(events) + 1))
    assert recorded[0].offset == HEADER_SIZE
    assert all(a.offset < b.offset for a, b in itertools.pairwise(recorded))
    assert [r.event for r in recorded] == events


def test_reopen_replays_everything_and_continues_the_sequence(log_path: Path, make_events) -> None:
    """Reopening a log reads back the same events and the next append continues the numbering."""
    first = write(log_path, make_events("t1"))
    with EventLog(log_path) as log:
        assert list(log.read()) == first
        assert log.next_seq == len(first) + 1
        more = log.append_many(make_events("t2"))
    assert more[0].seq == len(first) + 1
    assert read_all(log_path) == first + more


def test_read_from_a_frame_offset_streams_the_tail(log_path: Path, make_events) -> None:
    """read(offset) of a frame boundary yields that event and every later one."""
    recorded = write(log_path, make_events())
    with EventLog(log_path, readonly=True) as log:
        assert list(log.read(recorded[5].offset)) == recorded[5:]
        assert list(log.read(log.size)) == []


def test_reader_sees_a_live_writer_appends(log_path: Path, make_events) -> None:
    """A read-only log opened before appends sees them when it reads after."""
    events = make_events()
    with EventLog(log_path) as writer:
        writer.append(events[0])
        with EventLog(log_path, readonly=True) as reader:
            writer.append_many(events[1:])
            assert [r.event for r in reader.read()] == events
        assert [r.event for r in writer.read()] == events


def test_append_many_of_nothing_writes_nothing(log_path: Path) -> None:
    """append_many([]) returns [] and leaves the log as it was."""
    with EventLog(log_path) as log:
        size = log.size
        assert log.append_many([]) == []
        assert log.size == size == HEADER_SIZE
        assert log.next_seq == 1


def test_a_new_log_starts_with_the_header(log_path: Path) -> None:
    """A new log is just its header: magic, format version and a log id; parents are created."""
    nested = log_path.parent / "a" / "b" / "events.hrlog"
    with EventLog(nested) as log:
        assert len(log.log_id) == 16
    data = nested.read_bytes()
    assert data.startswith(MAGIC)
    assert len(data) == HEADER_SIZE
    with EventLog(nested) as again:
        assert again.log_id == log.log_id


def test_readonly_log_refuses_appends(log_path: Path, make_events) -> None:
    """A read-only log refuses append and append_many with PermissionError."""
    write(log_path, [])
    with EventLog(log_path, readonly=True) as log:
        with pytest.raises(PermissionError, match="read-only"):
            log.append(make_events.started("t1"))
        with pytest.raises(PermissionError, match="read-only"):
            log.append_many([make_events.started("t1")])


def test_closed_log_refuses_appends_and_close_is_idempotent(log_path: Path, make_events) -> None:
    """After close, appends raise ValueError; closing again is harmless."""
    log = EventLog(log_path)
    log.close()
    log.close()
    with pytest.raises(ValueError, match="closed"):
        log.append(make_events.started("t1"))


def test_an_event_too_large_for_a_frame_is_refused_before_anything_is_written(
    log_path: Path, make_events
) -> None:
    """An event over the 16 MiB frame limit is a ValueError; the log and sequence stay as they were.

    Written, such a frame would read back as a torn tail and be cut off with what follows it.
    """
    huge = make_events.fetched("t1", ("广东省",), ("x" * (17 * 1024 * 1024),))
    with EventLog(log_path) as log:
        log.append(make_events.created("t1"))
        size, next_seq = log.size, log.next_seq
        with pytest.raises(ValueError, match=r"at most 16777216 bytes\. Nothing was written"):
            log.append(huge)
        with pytest.raises(ValueError, match="ChildrenFetched encodes to"):
            log.append_many([make_events.started("t1"), huge])
        assert (log.size, log.next_seq) == (size, next_seq)
        log.append(make_events.started("t1"))
    assert [type(r.event).__name__ for r in read_all(log_path)] == ["TaskCreated", "TaskStarted"]


def test_close_releases_the_lock_even_when_the_final_sync_fails(
    log_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing fdatasync at close is raised, but the file and the writer lock are let go."""
    log = EventLog(log_path, fsync="never")

    def broken_sync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(store._log.os, "fdatasync", broken_sync)
    with pytest.raises(OSError, match="Input/output error"):
        log.close()
    monkeypatch.undo()
    log.close()
    with EventLog(log_path) as again:
        assert again.next_seq == 1


def test_readonly_open_of_a_missing_log_fails(log_path: Path) -> None:
    """A read-only open never creates the file."""
    with pytest.raises(FileNotFoundError):
        EventLog(log_path, readonly=True)
    assert not log_path.exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short"),
        (b"HRLOG", "too short"),
        (b"NOTALOG!" + bytes(20), "bad magic"),
        (MAGIC + (99).to_bytes(4, "little") + bytes(16), "format version 99"),
    ],
    ids=["empty", "short", "magic", "version"],
)
def test_a_file_that_is_not_a_log_is_refused(log_path: Path, data: bytes, message: str) -> None:
    """Opening a file without a valid header is a LogFormatError; the file is not touched."""
    log_path.write_bytes(data)
    with pytest.raises(LogFormatError, match=message):
        EventLog(log_path, readonly=True)
    if data:
        with pytest.raises(LogFormatError, match=message):
            EventLog(log_path)
    assert log_path.read_bytes() == data


texts = st.text(max_size=8)
log_events = st.one_of(
    st.builds(TaskCreated, task_id=texts, task_type=texts, target=texts | st.none()),
    st.builds(TaskStarted, task_id=texts),
    st.builds(ProgressChanged, task_id=texts, progress=st.integers(0, 100), current_step=texts),
    st.builds(
        ChildrenFetched,
        task_id=texts,
        level=texts,
        path=st.lists(texts, max_size=3).map(tuple),
        children=st.lists(texts, max_size=5).map(tuple),
    ),
)


@settings(max_examples=50, deadline=None)
@given(batches=st.lists(st.lists(log_events, min_size=1, max_size=5), max_size=8))
def test_any_appends_read_back_after_reopen(batches: list[list[Event]]) -> None:
    """Whatever is appended, one at a time or in batches, reads back equal after reopening."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.hrlog"
        appended: list[Recorded] = []
        with EventLog(path) as log:
            for batch in batches:
                if len(batch) == 1:
                    appended.append(log.append(batch[0]))
                else:
                    appended.extend(log.append_many(batch))
        assert read_all(path) == appended
        assert [r.seq for r in appended] == list(range(1, len(appended) + 1))


# fsync policies.


def test_invalid_fsync_policy_names_the_allowed_ones(log_path: Path) -> None:
    """An unknown fsync policy is a ValueError listing always, batch and never; no file is made."""
    with pytest.raises(ValueError, match="'sometimes' is not one of always, batch, never"):
        EventLog(log_path, fsync="sometimes")  # type: ignore[arg-type]
    assert not log_path.exists()


def test_batch_interval_must_be_positive(log_path: Path) -> None:
    """A batch interval of zero or less is refused."""
    with pytest.raises(ValueError, match="batch_interval"):
        EventLog(log_path, batch_interval=0)


@pytest.mark.parametrize("policy", FSYNC_POLICIES)
def test_every_fsync_policy_round_trips(log_path: Path, make_events, policy: str) -> None:
    """Under always, batch and never, appended events read back after reopening."""
    events = make_events()
    with EventLog(log_path, fsync=policy) as log:  # type: ignore[arg-type]
        recorded = [log.append(e) for e in events[:3]] + log.append_many(events[3:])
    assert read_all(log_path) == recorded


def test_fsync_always_syncs_every_append_call(
    log_path: Path, make_events, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under always, each append or append_many call syncs once before it returns."""
    calls: list[int] = []
    real = os.fdatasync
    with EventLog(log_path, fsync="always") as log:
        monkeypatch.setattr(store._log.os, "fdatasync", lambda fd: calls.append(fd) or real(fd))
        log.append(make_events.started("t1"))
        assert len(calls) == 1
        log.append_many(make_events()[:4])
        assert len(calls) == 2


def test_fsync_never_leaves_syncing_to_the_kernel_until_close(
    log_path: Path, make_events, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under never, appends do not sync; close does."""
    calls: list[int] = []
    real = os.fdatasync
    log = EventLog(log_path, fsync="never")
    monkeypatch.setattr(store._log.os, "fdatasync", lambda fd: calls.append(fd) or real(fd))
    log.append_many(make_events())
    log.append(make_events.started("t2"))
    assert calls == []
    log.close()
    assert len(calls) == 1


# Torn tails.


def test_torn_tail_at_every_byte_of_the_last_frame(
    log_path: Path, make_events, caplog: pytest.LogCaptureFixture
) -> None:
    """Cut anywhere inside the last frame, a log reads exactly the frames before it.

    A read-only open warns and leaves the file alone; a writer open warns, cuts the torn bytes
    off, and the next append takes the lost event's sequence number.
    """
    caplog.set_level(logging.WARNING, logger=STORE_LOGGER)
    recorded = write(log_path, with_big_last_frame(make_events))
    full = log_path.read_bytes()
    last = recorded[-1].offset
    assert len(full) - last > 100
    prefix = recorded[:-1]
    for cut in range(last + 1, len(full)):
        torn = full[:cut]
        log_path.write_bytes(torn)
        caplog.clear()
        assert read_all(log_path) == prefix, cut
        assert log_path.read_bytes() == torn
        assert f"torn tail at byte offset {last}" in caplog.text
        caplog.clear()
        with EventLog(log_path) as log:
            assert log.size == last
            assert log.next_seq == recorded[-1].seq
            assert list(log.read()) == prefix
        assert [r.levelno for r in caplog.records] == [logging.WARNING]
        assert f"torn tail at byte offset {last}" in caplog.text
        assert "cut off" in caplog.text
        assert log_path.read_bytes() == full[:last]


def test_torn_tail_cut_off_then_append_continues(log_path: Path, make_events) -> None:
    """After a torn tail is cut off, new appends land where it was and read back."""
    recorded = write(log_path, with_big_last_frame(make_events))
    full = log_path.read_bytes()
    log_path.write_bytes(full[: recorded[-1].offset + 11])
    with EventLog(log_path) as log:
        again = log.append(recorded[-1].event)
    assert again == recorded[-1]
    assert log_path.read_bytes() == full


def test_intact_log_opens_without_warning(
    log_path: Path, make_events, caplog: pytest.LogCaptureFixture
) -> None:
    """A log ending on a frame boundary opens silently and unchanged."""
    caplog.set_level(logging.WARNING, logger=STORE_LOGGER)
    write(log_path, make_events())
    before = log_path.read_bytes()
    with EventLog(log_path):
        pass
    assert caplog.records == []
    assert log_path.read_bytes() == before


def test_bad_checksum_in_the_last_frame_is_a_torn_tail(log_path: Path, make_events) -> None:
    """A complete last frame that fails its checksum (a half-written page) is cut like a tear."""
    recorded = write(log_path, make_events())
    data = bytearray(log_path.read_bytes())
    data[-1] ^= 0xFF
    log_path.write_bytes(bytes(data))
    assert read_all(log_path) == recorded[:-1]
    with EventLog(log_path) as log:
        assert log.size == recorded[-1].offset


def test_torn_first_frame_leaves_an_empty_log(log_path: Path, make_events) -> None:
    """A log whose only frame is torn opens as an empty log, numbering from 1 again."""
    write(log_path, [make_events.started("t1")])
    data = log_path.read_bytes()
    log_path.write_bytes(data[: HEADER_SIZE + 3])
    with EventLog(log_path) as log:
        assert list(log.read()) == []
        assert log.next_seq == 1
    assert log_path.stat().st_size == HEADER_SIZE


# Corruption in the middle.


def corrupt_byte(data: bytes, index: int) -> bytes:
    """``data`` with every bit of byte ``index`` flipped."""
    out = bytearray(data)
    out[index] ^= 0xFF
    return bytes(out)


def test_any_flipped_byte_in_a_middle_frame_is_corruption(log_path: Path, make_events) -> None:
    """Flipping any byte of a middle frame (length, checksum or payload) names its offset;
    neither a writer nor a reader changes the file."""
    recorded = write(log_path, make_events())
    full = log_path.read_bytes()
    bad = recorded[4]
    for index in range(bad.offset, recorded[5].offset):
        damaged = corrupt_byte(full, index)
        log_path.write_bytes(damaged)
        with pytest.raises(LogCorruptedError, match=f"byte offset {bad.offset}") as info:
            EventLog(log_path)
        assert info.value.offset == bad.offset
        with pytest.raises(LogCorruptedError):
            EventLog(log_path, readonly=True)
        assert log_path.read_bytes() == damaged, index


@pytest.mark.parametrize("length", [0, 1, 0xFFFF, 0xFFFFFFFF], ids=["zero", "one", "64k", "max"])
def test_corrupt_length_field_is_corruption(log_path: Path, make_events, length: int) -> None:
    """A middle frame whose length field is wrong is corruption at its offset, not a tear."""
    recorded = write(log_path, make_events())
    data = bytearray(log_path.read_bytes())
    bad = recorded[3].offset
    data[bad : bad + 4] = length.to_bytes(4, "little")
    log_path.write_bytes(bytes(data))
    with pytest.raises(LogCorruptedError, match=f"corrupt frame at byte offset {bad}") as info:
        EventLog(log_path)
    assert "repair" in str(info.value)
    assert log_path.read_bytes() == bytes(data)


def test_corruption_loses_nothing(log_path: Path, make_events) -> None:
    """After a refused open, undoing the damage gives back every event: nothing was dropped."""
    recorded = write(log_path, make_events())
    full = log_path.read_bytes()
    index = recorded[2].offset + FRAME_HEAD + 3
    log_path.write_bytes(corrupt_byte(full, index))
    with pytest.raises(LogCorruptedError):
        EventLog(log_path)
    log_path.write_bytes(corrupt_byte(log_path.read_bytes(), index))
    assert read_all(log_path) == recorded


def test_read_yields_the_valid_prefix_then_raises(log_path: Path, make_events) -> None:
    """A reader opened before the damage yields every event before the bad frame, then raises."""
    recorded = write(log_path, make_events())
    full = log_path.read_bytes()
    with EventLog(log_path, readonly=True) as log:
        with open(log_path, "r+b") as f:
            f.seek(recorded[6].offset + FRAME_HEAD + 1)
            f.write(bytes([full[recorded[6].offset + FRAME_HEAD + 1] ^ 0xFF]))
        got: list[Recorded] = []
        with pytest.raises(LogCorruptedError, match=f"byte offset {recorded[6].offset}"):
            got.extend(log.read())
    assert got == recorded[:6]


# One writer across processes.

HOLDER = """
import sys
from store import EventLog
log = EventLog(sys.argv[1])
print("locked", flush=True)
sys.stdin.readline()
log.close()
"""

CONTENDER = """
import sys
from store import EventLog, LogLockedError
try:
    EventLog(sys.argv[1])
except LogLockedError as exc:
    print(exc, flush=True)
    sys.exit(3)
"""


def test_second_writer_process_is_refused_naming_the_holder(log_path: Path, make_events) -> None:
    """While another process writes, a writer open fails naming its pid; reads still work."""
    recorded = write(log_path, make_events())
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(log_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdin is not None
            assert holder.stdout.readline().strip() == "locked"
            with pytest.raises(LogLockedError, match=f"by pid {holder.pid};"):
                EventLog(log_path)
            assert read_all(log_path) == recorded
            holder.stdin.write("\n")
            holder.stdin.flush()
            assert holder.wait() == 0
        finally:
            holder.kill()
    with EventLog(log_path) as log:
        assert log.next_seq == len(recorded) + 1


def test_this_process_holding_the_log_refuses_another_process(log_path: Path) -> None:
    """A second process trying to write while this one holds the log is told this pid."""
    with EventLog(log_path):
        done = subprocess.run(
            [sys.executable, "-c", CONTENDER, str(log_path)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
        )
    assert done.returncode == 3, done.stderr
    assert f"already open for writing by pid {os.getpid()}" in done.stdout


def test_a_killed_writer_leaves_no_stale_lock(log_path: Path) -> None:
    """The lock dies with its holder: after the writer is killed, a new writer opens."""
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(log_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    ) as holder:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        holder.kill()
        holder.wait()
    with EventLog(log_path) as log:
        assert log.next_seq == 1


def test_a_closed_writer_lets_the_next_one_in(log_path: Path) -> None:
    """Closing a writer releases the lock for the next writer in the same process."""
    EventLog(log_path).close()
    with EventLog(log_path), pytest.raises(LogLockedError, match=f"pid {os.getpid()}"):
        EventLog(log_path)


# File modes.


@pytest.fixture
def open_umask():
    """Run with umask 0, so a file's mode is exactly what the code asked for."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("open_umask")
def test_log_and_lock_files_are_private(log_path: Path, make_events) -> None:
    """The log and its lock file are created with mode 0600, whatever the umask."""
    write(log_path, make_events())
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(f"{log_path}.lock").stat().st_mode) == 0o600
