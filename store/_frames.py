"""The on-disk format: a header, then checksummed frames.

    header  = MAGIC (8 bytes) | u32 format version | 16-byte log id
    frame   = u32 length | u32 crc32(length bytes + payload) | payload (msgpack)

All integers are little-endian. The checksum covers the length too, so a flipped bit in a length
field is caught as surely as one in a payload.

Telling a torn tail from corruption: a frame that is incomplete or fails its checksum is a torn
tail only when no valid frame follows it. If one does, the bad frame sits in the middle of good
data, and that is corruption: reported with its offset, never dropped silently.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Generator
from dataclasses import dataclass

MAGIC = b"HRLOG\r\n\x1a"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sI16s")
HEADER_SIZE = HEADER.size
FRAME_HEAD = struct.Struct("<II")
FRAME_HEAD_SIZE = FRAME_HEAD.size
MAX_PAYLOAD = 16 * 1024 * 1024

INTACT = "intact"
TORN_TAIL = "torn_tail"
CORRUPT = "corrupt"


class LogFormatError(Exception):
    """The file is not an event log this code can read."""


_LENGTH_CRC: dict[int, int] = {}


def _length_crc(length: int) -> int:
    crc = _LENGTH_CRC.get(length)
    if crc is None:
        crc = _LENGTH_CRC[length] = zlib.crc32(length.to_bytes(4, "little"))
    return crc


def frame_crc(length: int, payload: bytes | memoryview) -> int:
    """The checksum stored in a frame: crc32 over the length bytes, then the payload."""
    crc = _LENGTH_CRC.get(length)
    if crc is None:
        crc = _length_crc(length)
    return zlib.crc32(payload, crc)


def frame(payload: bytes) -> bytes:
    """Wrap one payload in its frame."""
    length = len(payload)
    if length > MAX_PAYLOAD:
        raise ValueError(f"event payload of {length} bytes exceeds the {MAX_PAYLOAD}-byte limit")
    return FRAME_HEAD.pack(length, frame_crc(length, payload)) + payload


def pack_header(log_id: bytes) -> bytes:
    """The header of a new log."""
    return HEADER.pack(MAGIC, FORMAT_VERSION, log_id)


def unpack_header(data: bytes | memoryview, path: str) -> bytes:
    """Check a log's header and return its log id."""
    if len(data) < HEADER_SIZE:
        raise LogFormatError(
            f"{path}: {len(data)} bytes is too short for an event log header ({HEADER_SIZE} bytes)"
        )
    magic, version, log_id = HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise LogFormatError(f"{path} is not a hospital-refresh event log (bad magic {magic!r})")
    if version != FORMAT_VERSION:
        raise LogFormatError(
            f"{path} has log format version {version}; this code reads version {FORMAT_VERSION}"
        )
    return bytes(log_id)


@dataclass(slots=True)
class ScanResult:
    """Where a scan of the frames ended, and why."""

    frames: int = 0
    valid_end: int = HEADER_SIZE
    fault: str = INTACT
    fault_offset: int | None = None
    detail: str = ""
    last_frame_offset: int | None = None


def _frame_ok(buf: memoryview, offset: int, end: int) -> int:
    """Return the end offset of a valid frame at ``offset``, or -1."""
    if end - offset < FRAME_HEAD_SIZE:
        return -1
    length, crc = FRAME_HEAD.unpack_from(buf, offset)
    stop = offset + FRAME_HEAD_SIZE + length
    if length == 0 or length > MAX_PAYLOAD or stop > end:
        return -1
    if frame_crc(length, buf[offset + FRAME_HEAD_SIZE : stop]) != crc:
        return -1
    return stop


def _valid_frame_after(buf: memoryview, offset: int, end: int) -> int | None:
    """The offset of the first valid frame strictly after ``offset``, if any."""
    for candidate in range(offset + 1, end - FRAME_HEAD_SIZE):
        if _frame_ok(buf, candidate, end) > 0:
            return candidate
    return None


def scan(
    buf: memoryview, start: int, result: ScanResult, verified_until: int = 0
) -> Generator[tuple[int, memoryview], None, None]:
    """Yield ``(offset, payload)`` for every valid frame from ``start``; fill ``result``.

    Stops at the first bad frame and records whether it is a torn tail or corruption. Frames
    ending at or before ``verified_until`` were checked by this process already (the open
    that took the writer lock, or our own appends), so their checksums are not computed again.
    """
    end = len(buf)
    offset = start
    result.valid_end = start
    unpack_head = FRAME_HEAD.unpack_from
    crc32 = zlib.crc32
    length_crcs = _LENGTH_CRC
    while offset < end:
        if end - offset >= FRAME_HEAD_SIZE:
            length, crc = unpack_head(buf, offset)
            body = offset + FRAME_HEAD_SIZE
            stop = body + length
            if 0 < length <= MAX_PAYLOAD and stop <= end:
                payload = buf[body:stop]
                if stop <= verified_until:
                    ok = True
                else:
                    seed = length_crcs.get(length)
                    if seed is None:
                        seed = _length_crc(length)
                    ok = crc32(payload, seed) == crc
                if ok:
                    result.frames += 1
                    result.last_frame_offset = offset
                    result.valid_end = stop
                    yield offset, payload
                    offset = stop
                    continue
                what = "checksum mismatch"
            else:
                what = f"frame claims {length} payload bytes, {max(end - body, 0)} remain"
        else:
            what = f"incomplete frame header ({end - offset} of {FRAME_HEAD_SIZE} bytes)"
        later = _valid_frame_after(buf, offset, end)
        result.fault_offset = offset
        if later is None:
            result.fault = TORN_TAIL
            result.detail = f"torn tail at byte offset {offset}: {what}; {end - offset} bytes"
        else:
            result.fault = CORRUPT
            result.detail = (
                f"corrupt frame at byte offset {offset} ({what}) followed by valid data at "
                f"byte offset {later}"
            )
        return
