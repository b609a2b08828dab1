"""Wiring: start every actor in order, and stop them so that nothing journaled is lost.

Live threads: ``concurrency`` fetch actors, a dispatcher, a journal, a supervisor, three level
actors, the LLM loop and the log's fsync thread: 13 at the default concurrency of 5, whatever
the size of the tree.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pykka
import structlog

from llm import Divisions, LLMService
from store import EventStore, FsyncPolicy

from ._journal import Journal
from ._levels import CityActor, DistrictActor, ProvinceActor
from ._logging import ensure_structlog
from ._loop import LoopThread
from ._messages import AttachSupervisor, PoolStats, Query
from ._pool import Dispatcher, FetchActor, OwnLoops
from ._reply import stopped, unanswered_at_stop
from ._retry import RetryPolicy
from ._supervisor import Supervisor
from ._tell import safe_tell
from ._view import StatusView

T = TypeVar("T")

log = structlog.get_logger("hospital_refresh.system")


@dataclass(frozen=True, slots=True)
class SystemConfig:
    """Everything the actor system can be tuned by."""

    concurrency: int = 5
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    call_timeout: float = 120.0
    fsync: FsyncPolicy = "batch"
    snapshot_every: int | None = 20_000
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.concurrency, int) or not 1 <= self.concurrency <= 256:
            raise ValueError(
                f"concurrency must be an integer from 1 to 256, got {self.concurrency!r}"
            )
        if not self.call_timeout > 0:
            raise ValueError(f"call_timeout must be > 0 seconds, got {self.call_timeout!r}")


class ActorSystem:
    """The running actors of one event log. Stop it with :meth:`stop` (idempotent)."""

    def __init__(
        self,
        log_path: str | os.PathLike[str],
        service: LLMService,
        config: SystemConfig | None = None,
        divisions: Divisions | None = None,
    ) -> None:
        ensure_structlog()
        self.config = config = config or SystemConfig()
        self.service = service
        self.view = StatusView()
        self.store = EventStore(log_path, fsync=config.fsync, snapshot_every=config.snapshot_every)
        self._stopped = False
        self._stop_lock = threading.Lock()
        self._unanswered: set[Future[Any]] = set()
        self.loop = LoopThread()
        self.own_loops = OwnLoops()
        self.refs: list[pykka.ActorRef[Any]] = []
        try:
            self.journal = self._start(Journal.start(self.store, self.view))
            self.dispatcher = self._start(
                Dispatcher.start(self.journal, self.loop, config.retry, config.seed)
            )
            self.workers = [
                self._start(
                    FetchActor.start(
                        self.dispatcher, service, self.loop, config.call_timeout, self.own_loops
                    )
                )
                for _ in range(config.concurrency)
            ]
            district = self._start(DistrictActor.start(self.journal, self.dispatcher, None))
            city = self._start(CityActor.start(self.journal, self.dispatcher, district))
            self.provinces = self._start(ProvinceActor.start(self.journal, self.dispatcher, city))
            self.supervisor = self._start(
                Supervisor.start(
                    self.journal,
                    self.dispatcher,
                    (self.provinces, city, district),
                    self.view,
                    divisions or Divisions.load(),
                )
            )
            self.journal.tell(AttachSupervisor(self.supervisor))
        except BaseException:
            self.stop()
            raise

    def _start(self, ref: pykka.ActorRef[Any]) -> pykka.ActorRef[Any]:
        self.refs.append(ref)
        return ref

    @property
    def running(self) -> bool:
        """True until :meth:`stop`, and while every actor is alive."""
        return not self._stopped and all(ref.is_alive() for ref in self.refs)

    def request(self, ref: pykka.ActorRef[Any], make: Callable[[Future[T]], Any]) -> Future[T]:
        """Send ``make(reply)`` to ``ref``; the returned future gets the reply."""
        reply: Future[T] = Future()
        with self._stop_lock:
            is_stopped = self._stopped
            if not is_stopped:
                self._unanswered.add(reply)
        if is_stopped or not safe_tell(ref, make(reply)):
            stopped(reply)
        reply.add_done_callback(self._answered)
        return reply

    def _answered(self, reply: Future[Any]) -> None:
        with self._stop_lock:
            self._unanswered.discard(reply)

    def query(self, fn: Callable[[Any], T]) -> Future[T]:
        """Run ``fn(projection)`` on the journal's thread (consistent with every append)."""
        return self.request(self.journal, lambda reply: Query(fn, reply))

    def pool_stats(self) -> Future[dict[str, Any]]:
        """Counters of the fetch pool: calls, retries, in flight, peak in flight..."""
        return self.request(self.dispatcher, PoolStats)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop producers first and the journal last, so every event sent is written.

        Each actor gets ``timeout`` seconds. A journal still busy after that keeps writing on
        its (daemon) thread and closes the log when done; if the process exits first, what it
        had not written yet is lost, as in a crash, and resume recovers it. A request not
        answered by then fails with ``RuntimeError``: its outcome is unknown (the log says).
        """
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        by_role = list(self.refs)
        journal = by_role.pop(0) if by_role else None
        for ref in by_role[:1]:  # the dispatcher: no new calls from here on
            _stop(ref, timeout)
        self.own_loops.cancel_all()
        self.loop.stop(self.service.aclose, timeout=timeout)
        for ref in by_role[1:]:
            _stop(ref, timeout)
        if journal is None:
            self.store.close()
        elif not _stop(journal, timeout):
            # The stop message waits behind every queued append; the journal closes the log
            # when it gets there. Closing it from here would race those appends.
            log.error(
                "journal still writing after the stop timeout; it closes the log when done",
                timeout_s=timeout,
            )
        # A request that reached an actor as it stopped is never answered: say so instead.
        with self._stop_lock:
            unanswered = list(self._unanswered)
        for reply in unanswered:
            unanswered_at_stop(reply)


def _stop(ref: pykka.ActorRef[Any], timeout: float) -> bool:
    """Stop one actor; False if it did not stop within ``timeout`` seconds."""
    try:
        ref.stop(block=True, timeout=timeout)
    except pykka.Timeout:
        log.warning("actor did not stop in time", actor=str(ref), timeout_s=timeout)
        return False
    return True
