"""Verify a log without touching it, and copy its valid prefix to a new file.

Both open the file read-only and take no lock, so they work while a writer runs; neither ever
modifies the original.
"""

from __future__ import annotations

import mmap
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from events import DEFAULT_CODEC, CodecError, EventCodec, Recorded, iso

from ._frames import CORRUPT, HEADER_SIZE, INTACT, TORN_TAIL, ScanResult, scan, unpack_header


@dataclass(slots=True)
class AuditReport:
    """What a full verification of a log found."""

    path: str
    size: int
    frames: int = 0
    valid_end: int = HEADER_SIZE
    fault: str = INTACT
    fault_offset: int | None = None
    detail: str = ""
    events_by_type: Counter[str] = field(default_factory=Counter)
    first_at: float | None = None
    last_at: float | None = None
    first_seq: int | None = None
    last_seq: int | None = None
    tasks: set[str] = field(default_factory=set)

    @property
    def exit_code(self) -> int:
        """0 intact, 1 only a torn tail (recoverable), 2 corruption."""
        return {INTACT: 0, TORN_TAIL: 1}.get(self.fault, 2)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form of the report."""
        return {
            "path": self.path,
            "size": self.size,
            "frames": self.frames,
            "valid_bytes": self.valid_end,
            "status": self.fault,
            "fault_offset": self.fault_offset,
            "detail": self.detail,
            "events_by_type": dict(sorted(self.events_by_type.items())),
            "first_event_at": iso(self.first_at),
            "last_event_at": iso(self.last_at),
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "tasks": sorted(self.tasks),
            "exit_code": self.exit_code,
        }


def iter_valid(
    path: str, codec: EventCodec = DEFAULT_CODEC, result: ScanResult | None = None
) -> tuple[bytes, list[Recorded], ScanResult]:
    """Read a log read-only: its header, the decoded events of its valid prefix, the scan result.

    A frame whose checksum holds but whose payload cannot be decoded is reported as corruption
    at its offset, like a bad checksum followed by valid data.
    """
    result = result or ScanResult()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(HEADER_SIZE)
        unpack_header(head, path)
        if size == HEADER_SIZE:
            return head, [], result
        records: list[Recorded] = []
        with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as mm:
            buf = memoryview(mm)
            frames = scan(buf, HEADER_SIZE, result)
            try:
                for offset, payload in frames:
                    try:
                        records.append(codec.decode(payload, offset))
                    except CodecError as exc:
                        result.frames -= 1
                        result.valid_end = offset
                        result.fault = CORRUPT
                        result.fault_offset = offset
                        result.detail = str(exc)
                        break
                    finally:
                        del payload
            finally:
                frames.close()
                buf.release()
    return head, records, result


def audit_log(path: str | os.PathLike[str], codec: EventCodec = DEFAULT_CODEC) -> AuditReport:
    """Verify every frame and event of the log at ``path``; never modifies it."""
    path = os.fspath(path)
    report = AuditReport(path=path, size=os.path.getsize(path))
    _, records, result = iter_valid(path, codec)
    report.frames = result.frames
    report.valid_end = result.valid_end
    report.fault = result.fault
    report.fault_offset = result.fault_offset
    report.detail = result.detail
    for rec in records:
        event = rec.event
        report.events_by_type[type(event).TYPE] += 1
        if event.task_id:
            report.tasks.add(event.task_id)
        report.tasks.update(getattr(event, "task_ids", ()))
    if records:
        report.first_at = min(r.event.at for r in records)
        report.last_at = max(r.event.at for r in records)
        report.first_seq = records[0].seq
        report.last_seq = records[-1].seq
    return report


def repair_log(
    path: str | os.PathLike[str], dest: str | None = None, codec: EventCodec = DEFAULT_CODEC
) -> tuple[str, AuditReport]:
    """Copy the valid prefix of the log at ``path`` to ``dest`` (a new file); returns its path.

    The original is left exactly as it was, so data after a corrupt frame can still be salvaged
    by hand. ``dest`` defaults to ``<path>.repaired-<UTC timestamp>`` and must not exist.
    """
    path = os.fspath(path)
    report = audit_log(path, codec)
    dest = dest or f"{path}.repaired-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with open(path, "rb") as src:
            remaining = report.valid_end
            while remaining:
                chunk = src.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                os.write(fd, chunk)
                remaining -= len(chunk)
        os.fsync(fd)
    finally:
        os.close(fd)
    return dest, report
