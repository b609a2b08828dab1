"""The `hospital-refresh` audit, replay and repair commands, run as the real console script."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import T0, EventFactory

from events import Event, Recorded, iso
from store import EventLog

SCRIPT = Path(sysconfig.get_path("scripts")) / "hospital-refresh"
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "tasks.cli"]


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``hospital-refresh ARGS`` in a child process and capture its output."""
    return subprocess.run(
        [*COMMAND, *map(str, args)], capture_output=True, text=True, check=False, timeout=120
    )


def two_tasks(make_events: EventFactory) -> list[Event]:
    """Task t1 succeeded, t2 failed, then t1 was cleaned up."""
    return [*make_events("t1"), *make_events("t2", outcome="failed"), make_events.cleaned("t1")]


@pytest.fixture
def recorded(log_path: Path, make_events: EventFactory) -> list[Recorded]:
    """An intact log of two tasks at ``log_path``; returns what was appended."""
    with EventLog(log_path) as log:
        return log.append_many(two_tasks(make_events))


def flip(path: Path, index: int) -> bytes:
    """Flip every bit of byte ``index`` of the file; return the damaged content."""
    data = bytearray(path.read_bytes())
    data[index] ^= 0xFF
    path.write_bytes(bytes(data))
    return bytes(data)


def test_audit_intact_log_exits_0_with_a_full_report(
    log_path: Path, recorded: list[Recorded]
) -> None:
    """An intact log audits with exit 0 and a JSON report of frames, types, times and tasks."""
    done = cli("audit", "--log", log_path, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["status"] == "intact"
    assert report["exit_code"] == 0
    assert report["frames"] == len(recorded)
    assert report["size"] == report["valid_bytes"] == log_path.stat().st_size
    assert report["first_seq"] == 1
    assert report["last_seq"] == len(recorded)
    assert report["first_event_at"] == iso(T0)
    assert report["last_event_at"] == iso(recorded[-1].event.at)
    assert report["tasks"] == ["t1", "t2"]
    assert report["events_by_type"]["ChildrenFetched"] == 12
    assert report["events_by_type"]["TasksCleanedUp"] == 1
    assert sum(report["events_by_type"].values()) == len(recorded)


def test_audit_text_report_says_intact(log_path: Path, recorded: list[Recorded]) -> None:
    """Without --json the audit prints a readable verdict and the frame count."""
    done = cli("audit", "--log", log_path)
    assert done.returncode == 0, done.stderr
    assert "INTACT" in done.stdout
    assert f"frames:     {len(recorded)} (seq 1..{len(recorded)})" in done.stdout


def test_audit_torn_tail_exits_1_and_leaves_the_file(
    log_path: Path, recorded: list[Recorded]
) -> None:
    """A torn last frame is reported as recoverable (exit 1) at its offset; the file is kept."""
    last = recorded[-1].offset
    torn = log_path.read_bytes()[: last + 5]
    log_path.write_bytes(torn)
    done = cli("audit", "--log", log_path, "--json")
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["status"] == "torn_tail"
    assert report["fault_offset"] == last
    assert report["frames"] == len(recorded) - 1
    assert report["valid_bytes"] == last
    assert log_path.read_bytes() == torn


def test_audit_corruption_exits_2_naming_the_offset(
    log_path: Path, recorded: list[Recorded]
) -> None:
    """A bad frame before valid ones is corruption: exit 2, the offset named, the file kept."""
    bad = recorded[5].offset
    damaged = flip(log_path, bad + 10)
    done = cli("audit", "--log", log_path)
    assert done.returncode == 2, done.stderr
    assert "CORRUPT" in done.stdout
    assert f"corrupt frame at byte offset {bad}" in done.stdout
    report = json.loads(cli("audit", "--log", log_path, "--json").stdout)
    assert report["fault_offset"] == bad
    assert report["frames"] == 5
    assert log_path.read_bytes() == damaged


def test_audit_of_a_file_that_is_not_a_log_exits_2(tmp_path: Path) -> None:
    """A file without the log header is reported as corrupt (exit 2) with a clear message."""
    path = tmp_path / "notes.txt"
    path.write_text("hello, this is not an event log\n")
    done = cli("audit", "--log", path)
    assert done.returncode == 2
    assert "not a hospital-refresh event log" in done.stderr


def test_audit_of_a_missing_log_is_a_usage_error(tmp_path: Path) -> None:
    """A missing log is neither intact nor corrupt: a short error, not a traceback."""
    done = cli("audit", "--log", tmp_path / "missing.hrlog")
    assert done.returncode not in (0, 1, 2)
    assert "No such file" in done.stderr
    assert "Traceback" not in done.stderr


def test_replay_json_prints_one_line_per_event_in_order(
    log_path: Path, recorded: list[Recorded]
) -> None:
    """replay --json prints the audit trail as JSON lines, one per event, in log order."""
    lines = replay_json(log_path)
    assert lines == [r.to_dict() for r in recorded]
    assert lines[2]["path"] == ["广东省"]
    assert lines[2]["children"] == ["广州市", "深圳市"]


def replay_json(log_path: Path, *extra: str) -> list[dict]:
    """The lines of ``replay --json``, parsed."""
    done = cli("replay", "--log", log_path, "--json", *extra)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_replay_task_filter_keeps_that_task_only(log_path: Path, recorded: list[Recorded]) -> None:
    """replay --task ID prints only that task's events, and the cleanups that name it."""
    t1 = replay_json(log_path, "--task", "t1")
    t2 = replay_json(log_path, "--task", "t2")
    assert [x["seq"] for x in t1] == [r.seq for r in recorded if r.event.task_id == "t1"] + [
        recorded[-1].seq
    ]
    assert t1[-1]["type"] == "TasksCleanedUp"
    assert t1[-1]["task_ids"] == ["t1"]
    assert {x["task_id"] for x in t2} == {"t2"}
    assert len(t1) + len(t2) == len(recorded)
    assert replay_json(log_path, "--task", "nobody") == []


def test_replay_text_prints_one_line_per_event(log_path: Path, recorded: list[Recorded]) -> None:
    """Plain replay prints a readable line per event, starting with its sequence number."""
    done = cli("replay", "--log", log_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(recorded)
    assert lines[0].startswith("#1 ")
    assert "TaskCreated" in lines[0]
    assert "广东省" in lines[2]


def test_replay_of_a_corrupt_log_prints_the_prefix_and_exits_2(
    log_path: Path, recorded: list[Recorded]
) -> None:
    """replay shows every event before a corrupt frame, warns with its offset, and exits 2."""
    bad = recorded[7].offset
    flip(log_path, bad + 9)
    done = cli("replay", "--log", log_path, "--json")
    assert done.returncode == 2
    assert [json.loads(x)["seq"] for x in done.stdout.splitlines()] == list(range(1, 8))
    assert f"byte offset {bad}" in done.stderr


def test_repair_copies_the_valid_prefix_and_keeps_the_original(
    log_path: Path, recorded: list[Recorded]
) -> None:
    """repair writes the frames before the corruption to a new file; the original is unchanged."""
    bad = recorded[6].offset
    damaged = flip(log_path, bad + 20)
    done = cli("repair", "--log", log_path)
    assert done.returncode == 0, done.stderr
    assert log_path.read_bytes() == damaged
    copies = [
        p for p in log_path.parent.iterdir() if p.name.startswith(f"{log_path.name}.repaired-")
    ]
    assert len(copies) == 1
    assert copies[0].read_bytes() == damaged[:bad]
    assert stat.S_IMODE(copies[0].stat().st_mode) == 0o600
    assert str(log_path) in done.stdout
    assert str(copies[0]) in done.stdout
    assert cli("audit", "--log", copies[0]).returncode == 0
    with EventLog(copies[0], readonly=True) as log:
        assert list(log.read()) == recorded[:6]


def test_repair_to_a_chosen_output_of_a_torn_log(log_path: Path, recorded: list[Recorded]) -> None:
    """repair --output writes the copy there; a torn tail is left out of it."""
    torn = log_path.read_bytes()[: recorded[-1].offset + 3]
    log_path.write_bytes(torn)
    out = log_path.parent / "fixed.hrlog"
    done = cli("repair", "--log", log_path, "--output", out)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == torn[: recorded[-1].offset]
    assert log_path.read_bytes() == torn


def test_repair_never_overwrites_an_existing_file(log_path: Path, recorded: list[Recorded]) -> None:
    """repair refuses an output that exists, with an error rather than a traceback."""
    out = log_path.parent / "taken.hrlog"
    out.write_bytes(b"keep me")
    done = cli("repair", "--log", log_path, "--output", out)
    assert done.returncode not in (0, 1, 2)
    assert "Traceback" not in done.stderr
    assert str(out) in done.stderr
    assert out.read_bytes() == b"keep me"
