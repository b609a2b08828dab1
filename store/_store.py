"""The log together with its projections: append, then fold; open restores snapshot + tail."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable

from events import DEFAULT_CODEC, Event, EventCodec, Projection, Recorded

from ._frames import HEADER_SIZE
from ._log import EventLog, FsyncPolicy, LogCorruptedError
from ._snapshot import Snapshot, read_snapshot, snapshot_path, write_snapshot

log = logging.getLogger("hospital_refresh.store")


class EventStore:
    """An :class:`EventLog` and the :class:`Projection` folded from it, kept in step.

    Every append is written to the log first and folded into the projection second, so the
    projection never shows what the log does not hold. Opening loads the snapshot when it can be
    trusted and replays only the events after it; ``snapshot_every`` events later a new snapshot
    is taken, and one more on close.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        readonly: bool = False,
        fsync: FsyncPolicy = "batch",
        snapshot_every: int | None = 20_000,
        codec: EventCodec = DEFAULT_CODEC,
    ) -> None:
        if snapshot_every is not None and snapshot_every < 1:
            raise ValueError(f"snapshot_every must be >= 1 or None, got {snapshot_every!r}")
        self.log = EventLog(path, readonly=readonly, fsync=fsync, codec=codec)
        self.snapshot_path = snapshot_path(self.log.path)
        self.snapshot_every = snapshot_every
        started = time.perf_counter()
        try:
            self.projection, self.snapshot_used = self._restore()
        except BaseException:
            self.log.close()
            raise
        self.replay_seconds = time.perf_counter() - started
        self._since_snapshot = 0

    @property
    def path(self) -> str:
        """The log file's path."""
        return self.log.path

    def _restore(self) -> tuple[Projection, bool]:
        """The projection as of the log's end, from the snapshot plus the tail when it can be
        trusted, else from a full replay; and whether the snapshot was used."""
        snap = read_snapshot(self.snapshot_path, self.log.log_id, self.log.fileno, self.log.size)
        if snap is not None:
            try:
                projection = Projection.from_state(snap.state)
                before = projection.events_applied
                projection.apply_all(self.log.read(snap.offset))
            except LogCorruptedError:
                raise
            except Exception as exc:  # any shape a damaged or foreign snapshot may take
                log.warning("ignoring snapshot %s: %s", self.snapshot_path, exc)
            else:
                self.events_replayed = projection.events_applied - before
                return projection, True
        projection = Projection().apply_all(self.log.read(HEADER_SIZE))
        self.events_replayed = projection.events_applied
        return projection, False

    def append(self, events: Iterable[Event]) -> list[Recorded]:
        """Journal ``events`` in order, then fold them into the projection."""
        recorded = self.log.append_many(events)
        apply = self.projection.apply
        for rec in recorded:
            apply(rec)
        self._since_snapshot += len(recorded)
        if self.snapshot_every is not None and self._since_snapshot >= self.snapshot_every:
            self._try_snapshot()
        return recorded

    def _try_snapshot(self) -> None:
        # A snapshot is a cache: failing to write one (disk full, a read-only directory) must
        # not fail the append that the log already holds. The next one is tried later.
        try:
            self.snapshot()
        except Exception as exc:
            self._since_snapshot = 0
            log.warning("could not write snapshot %s: %s", self.snapshot_path, exc)

    def snapshot(self) -> None:
        """Write a snapshot of the projection as of the last appended event."""
        if self.log.readonly:
            raise PermissionError(f"{self.path} was opened read-only")
        anchor = self.log.last_frame_offset
        write_snapshot(
            self.snapshot_path,
            Snapshot(
                log_id=self.log.log_id,
                offset=self.log.size,
                anchor_offset=anchor,
                anchor_crc=None if anchor is None else self.log.frame_crc_at(anchor),
                state=self.projection.to_state(),
            ),
        )
        self._since_snapshot = 0

    def close(self) -> None:
        """Snapshot if anything is new, then close the log. Idempotent."""
        if not self.log.readonly and self._since_snapshot and self.log.size > HEADER_SIZE:
            self._try_snapshot()
        self.log.close()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
