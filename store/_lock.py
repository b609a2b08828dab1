"""One writer per log, across processes: an exclusive advisory lock on a sidecar file.

The lock file holds the writer's pid so that a refused writer can say who holds the log. The
kernel drops a ``flock`` when its holder dies, so a crashed writer never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os


class LogLockedError(Exception):
    """Another writer holds the log."""


class WriterLock:
    """An exclusive, non-blocking ``flock`` on ``<log>.lock`` that records the holder's pid."""

    def __init__(self, log_path: str) -> None:
        self.path = f"{log_path}.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`LogLockedError` naming the holder's pid."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                raise LogLockedError(
                    f"{self.path[: -len('.lock')]} is already open for writing by pid {holder}; "
                    "stop that process first, or open the log read-only"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)  # closing drops the flock too
            raise
        self._fd = fd

    def release(self) -> None:
        """Let the next writer in."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)  # closing drops the flock in any case


def live_writer(log_path: str) -> int | None:
    """The pid of the process writing the log at ``log_path``, or None if nobody is.

    Reads the pid the writer recorded and checks that the process exists, without touching
    the lock itself, so a reader never gets in a starting writer's way.
    """
    try:
        with open(f"{log_path}.lock", "rb") as f:
            text = f.read(32).decode(errors="replace").strip()
    except FileNotFoundError:
        return None
    if not text.isdigit():
        return None
    pid = int(text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid
