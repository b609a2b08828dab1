"""The append-only event log: one writer appends frames, readers stream them from any offset.

fsync policies, and what each can lose when the power fails (a process crash loses nothing in
any policy: every append is handed to the kernel before it returns):

- ``always``: fsync after every append call. Loses nothing that was acknowledged. Slowest.
- ``batch`` (default): group commit. Appends return at once; a background thread fsyncs at most
  every ``batch_interval`` seconds (5 ms) when there is something new, and close fsyncs. Loses at
  most the last few milliseconds of events; the tail may be torn, which open cuts off.
- ``never``: the kernel writes back when it likes (typically within 30 s). Loses up to that.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import threading
import uuid
from collections import deque
from collections.abc import Generator, Iterable
from typing import Literal

from events import DEFAULT_CODEC, Event, EventCodec, Recorded

from ._frames import (
    CORRUPT,
    FRAME_HEAD,
    HEADER_SIZE,
    MAX_PAYLOAD,
    TORN_TAIL,
    ScanResult,
    frame_crc,
    pack_header,
    scan,
    unpack_header,
)
from ._lock import WriterLock

FsyncPolicy = Literal["always", "batch", "never"]
FSYNC_POLICIES: tuple[str, ...] = ("always", "batch", "never")

log = logging.getLogger("hospital_refresh.store")


class LogCorruptedError(Exception):
    """A bad frame sits before valid data: the log must be repaired, not silently truncated."""

    def __init__(self, path: str, offset: int, detail: str) -> None:
        self.path = path
        self.offset = offset
        super().__init__(
            f"{path}: {detail}. Nothing was changed; "
            f"run `hospital-refresh repair --log {path}` to copy the valid prefix to a new file"
        )


def _too_large(event: Event, length: int) -> ValueError:
    # Refused before anything is written: a frame this long would read back as a torn tail.
    return ValueError(
        f"{type(event).__name__} encodes to {length} bytes; one event may hold at most "
        f"{MAX_PAYLOAD} bytes. Nothing was written"
    )


def _map(fd: int) -> mmap.mmap | None:
    size = os.fstat(fd).st_size
    return mmap.mmap(fd, size, access=mmap.ACCESS_READ) if size else None


class EventLog:
    """A framed, checksummed, append-only log of events in one file.

    Open it for writing (the default) to append; an exclusive lock keeps other writers out, and a
    torn tail left by a crash is cut off. Open it with ``readonly=True`` to read while a writer
    runs; a read-only open never modifies the file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        readonly: bool = False,
        fsync: FsyncPolicy = "batch",
        batch_interval: float = 0.005,
        codec: EventCodec = DEFAULT_CODEC,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync policy {fsync!r} is not one of {', '.join(FSYNC_POLICIES)}")
        if batch_interval <= 0:
            raise ValueError(f"batch_interval must be > 0 seconds, got {batch_interval!r}")
        self.path = os.fspath(path)
        self.readonly = readonly
        self.fsync = fsync
        self.codec = codec
        self._lock = None if readonly else WriterLock(self.path)
        self._dirty = False
        self._closed = False
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None
        self.scan = ScanResult()
        if readonly:
            self._fd = os.open(self.path, os.O_RDONLY)
        else:
            parent = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(parent, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if self._lock is not None:
                self._lock.acquire()
            self._open(batch_interval)
        except BaseException:
            self._release()
            raise

    def _open(self, batch_interval: float) -> None:
        if not self.readonly and os.fstat(self._fd).st_size == 0:
            os.write(self._fd, pack_header(uuid.uuid4().bytes))
            os.fsync(self._fd)
        head = os.pread(self._fd, HEADER_SIZE, 0)
        self.log_id = unpack_header(head, self.path)
        self.scan = self._validate()
        self._end = self.scan.valid_end
        self.next_seq = 1
        self.last_frame_offset = self.scan.last_frame_offset
        if self.scan.last_frame_offset is not None:
            self.next_seq = self._read_at(self.scan.last_frame_offset).seq + 1
        if not self.readonly and self.fsync == "batch":
            self._syncer = threading.Thread(
                target=self._sync_loop, args=(batch_interval,), name="eventlog-fsync", daemon=True
            )
            self._syncer.start()

    def _validate(self) -> ScanResult:
        result = ScanResult()
        mm = _map(self._fd)
        if mm is not None:
            with mm, memoryview(mm) as buf:
                deque(scan(buf, HEADER_SIZE, result), maxlen=0)
        if result.fault == CORRUPT:
            raise LogCorruptedError(self.path, result.fault_offset or 0, result.detail)
        if result.fault == TORN_TAIL:
            if self.readonly:
                log.warning("%s: %s; reading the valid prefix only", self.path, result.detail)
            else:
                log.warning("%s: %s; cut off", self.path, result.detail)
                os.ftruncate(self._fd, result.valid_end)
                os.fsync(self._fd)
        return result

    def _read_at(self, offset: int) -> Recorded:
        length, _ = FRAME_HEAD.unpack(os.pread(self._fd, FRAME_HEAD.size, offset))
        payload = os.pread(self._fd, length, offset + FRAME_HEAD.size)
        return self.codec.decode(payload, offset)

    def frame_crc_at(self, offset: int) -> int:
        """The checksum stored in the frame at ``offset`` (used to anchor snapshots)."""
        return FRAME_HEAD.unpack(os.pread(self._fd, FRAME_HEAD.size, offset))[1]

    @property
    def fileno(self) -> int:
        """The open file descriptor (read-only use)."""
        return self._fd

    @property
    def size(self) -> int:
        """Bytes of valid log (header included)."""
        return self._end

    def append(self, event: Event) -> Recorded:
        """Append one event; it is in the kernel when this returns (see the fsync policy)."""
        if self.readonly or self._closed:
            return self.append_many((event,))[0]
        seq = self.next_seq
        payload = self.codec.encode(event, seq)
        length = len(payload)
        if length > MAX_PAYLOAD:
            raise _too_large(event, length)
        offset = self._end
        self._write(FRAME_HEAD.pack(length, frame_crc(length, payload)) + payload)
        self.next_seq = seq + 1
        self.last_frame_offset = offset
        return Recorded(seq, offset, event)

    def _write(self, data: bytes) -> None:
        """Write ``data`` at the end of the log, then apply the fsync policy."""
        end = self._end
        written = os.pwrite(self._fd, data, end)
        if written < len(data):  # a short write (rare): finish it
            view = memoryview(data)
            while written < len(view):
                written += os.pwrite(self._fd, view[written:], end + written)
        self._end = end + written
        if self.fsync == "always":
            os.fdatasync(self._fd)
        else:
            self._dirty = True

    def append_many(self, events: Iterable[Event]) -> list[Recorded]:
        """Append events in order with consecutive sequence numbers, in one write."""
        if self.readonly:
            raise PermissionError(f"{self.path} was opened read-only")
        if self._closed:
            raise ValueError(f"{self.path} is closed")
        encode = self.codec.encode
        pack_head = FRAME_HEAD.pack
        parts: list[bytes] = []
        recorded: list[Recorded] = []
        seq = self.next_seq
        offset = self._end
        for event in events:
            payload = encode(event, seq)
            length = len(payload)
            if length > MAX_PAYLOAD:
                raise _too_large(event, length)
            parts.append(pack_head(length, frame_crc(length, payload)))
            parts.append(payload)
            recorded.append(Recorded(seq, offset, event))
            seq += 1
            offset += 8 + length
        if not recorded:
            return recorded
        self._write(b"".join(parts))
        self.next_seq = seq
        self.last_frame_offset = recorded[-1].offset
        return recorded

    def read(self, from_offset: int = HEADER_SIZE) -> Generator[Recorded, None, None]:
        """Stream the recorded events from ``from_offset`` (a frame boundary) to the end.

        Raises :class:`LogCorruptedError` after the last valid event if a bad frame is followed
        by valid data; stops quietly at a torn tail.
        """
        decode = self.codec.decode
        result = ScanResult()
        mm = _map(self._fd)
        if mm is None:
            return
        end = mm.size() if self.readonly else min(mm.size(), self._end)
        buf = memoryview(mm)[:end]
        # A writer checked everything up to _end at open, under the lock, or wrote it itself:
        # no second checksum pass. A reader checks every frame it yields.
        trusted = 0 if self.readonly else self._end
        frames = scan(buf, max(from_offset, HEADER_SIZE), result, verified_until=trusted)
        try:
            for offset, payload in frames:
                recorded = decode(payload, offset)
                del payload
                yield recorded
        finally:
            frames.close()
            buf.release()
            # A decode error in flight: its traceback (the decoder's frame) still holds a view
            # of the map, and closing now would replace that error with a BufferError. The map
            # is unmapped when the last view goes.
            with contextlib.suppress(BufferError):
                mm.close()
        if result.fault == CORRUPT:
            raise LogCorruptedError(self.path, result.fault_offset or 0, result.detail)

    def sync(self) -> None:
        """Force everything appended so far to disk."""
        if not self.readonly and not self._closed:
            self._dirty = False
            os.fdatasync(self._fd)

    def _sync_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            if self._dirty:
                self._dirty = False
                try:
                    os.fdatasync(self._fd)
                except OSError:  # the fd was closed under us during shutdown
                    return

    def close(self) -> None:
        """Sync, release the writer lock and close the file. Idempotent."""
        if self._closed:
            return
        self._stop.set()
        if self._syncer is not None:
            self._syncer.join()
        try:
            if not self.readonly:
                os.fdatasync(self._fd)
        finally:
            self._closed = True
            self._release()

    def _release(self) -> None:
        try:
            if self._lock is not None:
                self._lock.release()
        finally:
            if getattr(self, "_fd", None) is not None:
                os.close(self._fd)
                self._fd = None  # type: ignore[assignment]

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "readonly" if self.readonly else f"writer fsync={self.fsync}"
        return f"<EventLog {self.path!r} {mode} size={self._end} next_seq={self.next_seq}>"
