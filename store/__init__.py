"""Where events are kept: the framed, checksummed, append-only log, and its snapshots.

This layer knows ``events`` only.
"""

from ._audit import AuditReport, audit_log, iter_valid, repair_log
from ._frames import CORRUPT, HEADER_SIZE, INTACT, MAGIC, TORN_TAIL, LogFormatError, ScanResult
from ._lock import LogLockedError, live_writer
from ._log import FSYNC_POLICIES, EventLog, FsyncPolicy, LogCorruptedError
from ._snapshot import Snapshot, read_snapshot, snapshot_path, write_snapshot
from ._store import EventStore

__all__ = [
    "CORRUPT",
    "FSYNC_POLICIES",
    "HEADER_SIZE",
    "INTACT",
    "MAGIC",
    "TORN_TAIL",
    "AuditReport",
    "EventLog",
    "EventStore",
    "FsyncPolicy",
    "LogCorruptedError",
    "LogFormatError",
    "LogLockedError",
    "ScanResult",
    "Snapshot",
    "audit_log",
    "iter_valid",
    "live_writer",
    "read_snapshot",
    "repair_log",
    "snapshot_path",
    "write_snapshot",
]
