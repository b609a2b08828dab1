"""Snapshots: the projections' state and the log offset it covers, so that open replays the tail.

A snapshot is only a cache of what replay would compute, so it is never trusted blindly. It is
ignored (and replay starts from the beginning) when it is missing, fails its checksum, was taken
of another log (the log id differs), covers more than the log holds, or when the frame it claims
to end on is not there with the same checksum (the log was repaired or replaced).

    file = MAGIC (8 bytes) | u32 crc32(body) | body (msgpack)

Written to a temporary file, fsynced, then renamed over the old one: a crash mid-write leaves the
previous snapshot intact.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import msgpack

from ._frames import FRAME_HEAD, HEADER_SIZE

MAGIC = b"HRSNAP\x00\x01"
HEAD = struct.Struct("<8sI")

log = logging.getLogger("hospital_refresh.store")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a snapshot holds: the fold's state up to ``offset`` of the log ``log_id``."""

    log_id: bytes
    offset: int
    anchor_offset: int | None
    anchor_crc: int | None
    state: dict[str, Any]


def snapshot_path(log_path: str) -> str:
    """Where the snapshot of the log at ``log_path`` lives."""
    return f"{log_path}.snapshot"


def write_snapshot(path: str, snap: Snapshot) -> None:
    """Atomically replace the snapshot at ``path``."""
    body = msgpack.packb(
        {
            "log_id": snap.log_id,
            "offset": snap.offset,
            "anchor_offset": snap.anchor_offset,
            "anchor_crc": snap.anchor_crc,
            "state": snap.state,
        },
        use_bin_type=True,
    )
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, HEAD.pack(MAGIC, zlib.crc32(body)) + body)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_snapshot(path: str, log_id: bytes, log_fd: int, log_size: int) -> Snapshot | None:
    """Load the snapshot at ``path`` if it can be trusted for this log, else None (logged)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("ignoring snapshot %s: unreadable (%s); replaying the whole log", path, exc)
        return None
    reason = _check(data)
    if reason is None:
        try:
            raw = msgpack.unpackb(
                data[HEAD.size :], use_list=False, raw=False, strict_map_key=False
            )
            snap = Snapshot(
                raw["log_id"], raw["offset"], raw["anchor_offset"], raw["anchor_crc"], raw["state"]
            )
            reason = _stale(snap, log_id, log_fd, log_size)
        except (ValueError, TypeError, KeyError, OverflowError, msgpack.UnpackException) as exc:
            reason = f"undecodable ({exc})"
        else:
            if reason is None:
                return snap
    log.warning("ignoring snapshot %s: %s; replaying the whole log", path, reason)
    return None


def _check(data: bytes) -> str | None:
    if len(data) < HEAD.size:
        return "too short"
    magic, crc = HEAD.unpack_from(data)
    if magic != MAGIC:
        return "bad magic"
    if zlib.crc32(data[HEAD.size :]) != crc:
        return "checksum mismatch"
    return None


def _stale(snap: Snapshot, log_id: bytes, log_fd: int, log_size: int) -> str | None:
    if snap.log_id != log_id:
        return "taken of another log"
    if snap.offset > log_size:
        return f"covers {snap.offset} bytes but the log holds {log_size}"
    if snap.anchor_offset is None:
        return None if snap.offset == HEADER_SIZE else "no anchor frame"
    head = os.pread(log_fd, FRAME_HEAD.size, snap.anchor_offset)
    if len(head) < FRAME_HEAD.size:
        return "anchor frame missing"
    length, crc = FRAME_HEAD.unpack(head)
    if snap.anchor_offset + FRAME_HEAD.size + length != snap.offset or crc != snap.anchor_crc:
        return "the log no longer holds the frame the snapshot ends on"
    return None
