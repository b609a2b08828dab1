"""Projections: pure folds of events into task status and the fetched tree.

No I/O and no clock: the same events in the same order always give the same state, which is what
lets replay rebuild status after a crash and lets an auditor trust what status says.

Progress is weighted by subtree, never by done / discovered (which goes backwards as the tree
grows): the root weighs 1, each child an equal share of its parent, and a node's weight counts as
done once it is a leaf (hospitals fetched, or no children) or has failed.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice
from typing import Any

from ._records import (
    ChildrenFetched,
    Event,
    FetchRetried,
    NodeFailed,
    Path,
    ProgressChanged,
    Recorded,
    TaskCancelled,
    TaskCreated,
    TaskFailed,
    TaskResumed,
    TasksCleanedUp,
    TaskStarted,
    TaskSucceeded,
    iso,
)

PENDING = "PENDING"
RUNNING = "RUNNING"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
CANCELLED = "CANCELLED"
STATUSES: tuple[str, ...] = (PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINISHED: frozenset[str] = frozenset({SUCCEEDED, FAILED, CANCELLED})

LEVELS: tuple[str, ...] = ("province", "city", "district", "hospital")
LEVEL_LABELS: dict[str, str] = {
    "province": "省份列表",
    "city": "市级列表",
    "district": "区县列表",
    "hospital": "医院列表",
}
LEAF_DEPTH = 3
"""Paths this long are districts: their children are hospitals, which are not nodes."""

PROJECTION_VERSION = 4
"""Bumped whenever the state layout or a rule of the fold changes, so that an older snapshot is
ignored, not trusted (4: events after a task's end are ignored)."""

CHECKED_LEVELS: tuple[str, ...] = ("province", "city", "district")
"""Levels whose names are checked against reference data (``ChildrenFetched.adcodes``)."""

STATUS_UNVERIFIED_PATHS = 20
"""At most this many unverified paths are listed in a status dict (the tree lists them all)."""


def step_label(path: Path, level: str) -> str:
    """Say in words where a task is, e.g. ``广东省 / 广州市 / 天河区: 医院列表``."""
    where = " / ".join(path) if path else "全国"
    return f"{where}: {LEVEL_LABELS.get(level, level)}"


def root_path(task_type: str, target: str | None) -> Path:
    """The node a task starts from: the country, or its province."""
    return (target,) if task_type == "province" and target else ()


class TaskState:
    """Everything replay knows about one task: its status and its tree."""

    __slots__ = (
        "_step",
        "adcodes",
        "checked",
        "children",
        "completion_tokens",
        "counts",
        "created_at",
        "done_weight",
        "error",
        "failed",
        "finished_at",
        "interrupted",
        "pending",
        "progress",
        "prompt_tokens",
        "retries",
        "root",
        "started_at",
        "status",
        "target",
        "task_id",
        "task_type",
        "unverified",
        "verified",
        "weights",
    )

    def __init__(self, task_id: str, task_type: str, target: str | None, created_at: float):
        self.task_id = task_id
        self.task_type = task_type
        self.target = target
        self.status = PENDING
        self.progress = 0
        self._step: str | tuple[Path, str] = "等待开始"
        self.created_at = created_at
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.error: str | None = None
        self.counts: dict[str, int] = dict.fromkeys(LEVELS, 0)
        self.retries = 0
        self.children: dict[Path, tuple[str, ...]] = {}
        self.root = root = root_path(task_type, target)
        self.weights: dict[Path, float] = {root: 1.0}
        self.pending: dict[Path, None] = {root: None}
        self.failed: dict[Path, str] = {}
        self.done_weight = 0.0
        self.interrupted = False
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.checked: dict[str, int] = dict.fromkeys(CHECKED_LEVELS, 0)
        self.verified: dict[str, int] = dict.fromkeys(CHECKED_LEVELS, 0)
        self.adcodes: dict[Path, str] = {}
        self.unverified: dict[Path, None] = {}

    @property
    def current_step(self) -> str:
        """Where the task is, in words: the last list fetched, or its lifecycle step."""
        step = self._step
        return step if isinstance(step, str) else step_label(*step)

    @current_step.setter
    def current_step(self, value: str) -> None:
        self._step = value

    @property
    def finished(self) -> bool:
        """True once the task can change no more (succeeded, failed or cancelled)."""
        return self.status in FINISHED

    def computed_progress(self) -> int:
        """Progress implied by the tree: the done share of the root's weight, below 100."""
        return min(99, int(self.done_weight * 100 + 1e-9))

    def frontier(self) -> list[Path]:
        """Nodes discovered but neither fetched nor failed: what resuming must fetch."""
        return list(self.pending)

    def apply_children(self, event: ChildrenFetched) -> bool:
        """Record a fetched list; a second list for the same path is ignored (idempotent),
        though the tokens it cost still count."""
        self.prompt_tokens += event.prompt_tokens
        self.completion_tokens += event.completion_tokens
        path = event.path
        if path in self.children:
            return False
        weight = self.weights.get(path, 0.0)
        if path in self.failed:
            del self.failed[path]
            self.done_weight -= weight
        self.pending.pop(path, None)
        self.children[path] = event.children
        self.counts[event.level] = self.counts.get(event.level, 0) + len(event.children)
        if event.adcodes and len(event.adcodes) == len(event.children):
            self._apply_check(path, event)
        if self.task_type == "province" and path == self.root:
            self.counts["province"] += 1
        if len(path) < LEAF_DEPTH and event.children:
            share = weight / len(event.children)
            for name in event.children:
                child = (*path, name)
                self.weights[child] = share
                self.pending[child] = None
        else:
            self.done_weight += weight
        # Labelled when read: replay folds thousands of lists for each status it renders.
        self._step = (path, event.level)
        return True

    def _apply_check(self, path: Path, event: ChildrenFetched) -> None:
        """Count the children matched against reference data; remember codes and misses."""
        level = event.level
        matched = 0
        for name, code in zip(event.children, event.adcodes, strict=True):
            if code:
                self.adcodes[(*path, name)] = code
                matched += 1
            else:
                self.unverified[(*path, name)] = None
        self.checked[level] = self.checked.get(level, 0) + len(event.children)
        self.verified[level] = self.verified.get(level, 0) + matched

    def verification(self) -> dict[str, dict[str, Any]]:
        """Per checked level (plural, as in ``counts``): names checked, names matched, and the
        share matched (None when nothing was checked)."""
        out: dict[str, dict[str, Any]] = {}
        for level, key in zip(CHECKED_LEVELS, ("provinces", "cities", "districts"), strict=True):
            checked = self.checked.get(level, 0)
            verified = self.verified.get(level, 0)
            share = round(verified / checked, 4) if checked else None
            out[key] = {"checked": checked, "verified": verified, "share": share}
        return out

    def mark_failed(self, path: Path, error: str) -> None:
        """A node failed for good: its weight counts as resolved, its path is listed."""
        path = tuple(path)
        if path in self.children or path in self.failed:
            return
        self.pending.pop(path, None)
        self.failed[path] = error
        self.done_weight += self.weights.get(path, 0.0)

    def resume(self) -> None:
        """Carry on: failed nodes go back to the frontier and their weight is no longer done."""
        for path in self.failed:
            self.done_weight -= self.weights.get(path, 0.0)
            self.pending[path] = None
        self.failed = {}
        self.status = RUNNING
        self.finished_at = None
        self.error = None
        self.interrupted = False
        self.current_step = "继续刷新"

    def to_status(self) -> dict[str, Any]:
        """The dict ``TaskManager.get_task_status`` returns."""
        return {
            "task_id": self.task_id,
            "task_type": self.task_type,
            "target": self.target,
            "status": self.status,
            "progress": self.progress,
            "current_step": self.current_step,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "error": self.error,
            "counts": {
                "provinces": self.counts["province"],
                "cities": self.counts["city"],
                "districts": self.counts["district"],
                "hospitals": self.counts["hospital"],
            },
            "retries": self.retries,
            "interrupted": self.interrupted,
            "failed_paths": [list(p) for p in self.failed],
            "pending_nodes": len(self.pending),
            "tokens": {
                "prompt": self.prompt_tokens,
                "completion": self.completion_tokens,
                "total": self.prompt_tokens + self.completion_tokens,
            },
            "verified": self.verification(),
            "unverified_paths": [list(p) for p in islice(self.unverified, STATUS_UNVERIFIED_PATHS)],
        }

    def to_state(self) -> dict[str, Any]:
        """A plain, msgpack-able copy of this state, for snapshots."""
        return {name: getattr(self, name) for name in STATE_FIELDS}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TaskState:
        """Rebuild a state saved by :meth:`to_state`."""
        self = cls.__new__(cls)
        for name in STATE_FIELDS:
            setattr(self, name, state[name])
        self.root = root_path(self.task_type, self.target)
        self.counts = dict(self.counts)
        self.children = {tuple(k): tuple(v) for k, v in self.children.items()}
        self.weights = {tuple(k): v for k, v in self.weights.items()}
        self.pending = {tuple(k): None for k in self.pending}
        self.failed = {tuple(k): v for k, v in self.failed.items()}
        self.checked = dict(self.checked)
        self.verified = dict(self.verified)
        self.adcodes = {tuple(k): v for k, v in self.adcodes.items()}
        self.unverified = {tuple(k): None for k in self.unverified}
        return self


STATE_FIELDS: tuple[str, ...] = (
    *(name for name in TaskState.__slots__ if name not in ("_step", "root")),
    "current_step",
)
"""What a snapshot keeps of a task: the derived ``root`` is recomputed, the step is rendered."""


class Projection:
    """The fold of the whole log: one :class:`TaskState` per task, plus where the fold stands."""

    def __init__(self) -> None:
        self.tasks: dict[str, TaskState] = {}
        self.last_seq = 0
        self.events_applied = 0

    def apply(self, recorded: Recorded) -> None:
        """Fold one recorded event in."""
        self.last_seq = recorded.seq
        self.events_applied += 1
        self.apply_event(recorded.event)

    def apply_all(self, records: Iterable[Recorded]) -> Projection:
        """Fold many recorded events in, in order; returns self for chaining."""
        apply_event = self.apply_event
        for recorded in records:
            apply_event(recorded.event)
            self.last_seq = recorded.seq
            self.events_applied += 1
        return self

    def apply_event(self, event: Event) -> None:
        """Fold one bare event in (no sequence bookkeeping)."""
        if isinstance(event, ChildrenFetched):
            state = self.tasks.get(event.task_id)
            # finished_at is None: the task has not ended (cheaper than .finished, same meaning).
            if state is not None and state.finished_at is None:
                state.apply_children(event)
            return
        if isinstance(event, TaskCreated):
            self.tasks[event.task_id] = TaskState(
                event.task_id, event.task_type, event.target, event.at
            )
            return
        if isinstance(event, TasksCleanedUp):
            for task_id in event.task_ids:
                self.tasks.pop(task_id, None)
            return
        state = self.tasks.get(event.task_id)
        if state is None:
            return
        if state.finished:
            # An ended task changes no more, whatever a racing writer appended after its end;
            # only a FAILED task may be resumed.
            if isinstance(event, TaskResumed) and state.status == FAILED:
                state.resume()
            return
        if isinstance(event, ProgressChanged):
            state.progress = max(state.progress, min(99, event.progress))
            state.current_step = event.current_step
        elif isinstance(event, FetchRetried):
            state.retries += 1
            state.prompt_tokens += event.prompt_tokens
            state.completion_tokens += event.completion_tokens
        elif isinstance(event, NodeFailed):
            state.mark_failed(event.path, event.error)
            state.prompt_tokens += event.prompt_tokens
            state.completion_tokens += event.completion_tokens
        elif isinstance(event, TaskStarted):
            state.status = RUNNING
            state.started_at = event.at
            state.current_step = "开始刷新"
        elif isinstance(event, TaskSucceeded):
            state.status = SUCCEEDED
            state.progress = 100
            state.finished_at = event.at
            state.current_step = "完成"
        elif isinstance(event, TaskFailed):
            state.status = FAILED
            state.finished_at = event.at
            state.error = event.error
            for path in event.failed_paths:
                state.mark_failed(path, event.error)
            state.current_step = "失败"
        elif isinstance(event, TaskResumed):
            state.resume()
        elif isinstance(event, TaskCancelled):
            state.status = CANCELLED
            state.finished_at = event.at
            state.current_step = "已取消"

    def status(self, task_id: str) -> dict[str, Any] | None:
        """The status dict of one task, or None when the log knows no such task."""
        state = self.tasks.get(task_id)
        return None if state is None else state.to_status()

    def list_status(self, status: str | None = None) -> list[dict[str, Any]]:
        """Status dicts of every task (optionally only those in ``status``), oldest first."""
        return [s.to_status() for s in self.tasks.values() if status is None or s.status == status]

    def tree(self, task_id: str) -> dict[str, Any] | None:
        """The fetched hierarchy of one task as nested dicts, plus its frontier and failures."""
        state = self.tasks.get(task_id)
        if state is None:
            return None
        return {
            "task_id": task_id,
            "root": list(state.root),
            "children": nest(state.children, state.root),
            "frontier": [list(p) for p in state.pending],
            "failed": {" / ".join(p): e for p, e in state.failed.items()},
            "unverified": [list(p) for p in state.unverified],
        }

    def to_state(self) -> dict[str, Any]:
        """A plain copy of the whole fold, for snapshots."""
        return {
            "version": PROJECTION_VERSION,
            "last_seq": self.last_seq,
            "events_applied": self.events_applied,
            "tasks": {tid: s.to_state() for tid, s in self.tasks.items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Projection:
        """Rebuild a fold saved by :meth:`to_state`; raises ValueError on another version."""
        if state.get("version") != PROJECTION_VERSION:
            raise ValueError(f"projection state version {state.get('version')!r} is not current")
        self = cls()
        self.last_seq = state["last_seq"]
        self.events_applied = state["events_applied"]
        self.tasks = {tid: TaskState.from_state(s) for tid, s in state["tasks"].items()}
        return self


def nest(children: dict[Path, tuple[str, ...]], root: Path) -> dict[str, Any]:
    """Turn ``path -> children`` into nested dicts; a name with nothing fetched maps to None.

    Hospitals (the leaves) map to None as well: they are names, not nodes.
    """

    def build(path: Path) -> dict[str, Any] | None:
        names = children.get(path)
        if names is None:
            return None
        return {name: build((*path, name)) for name in names}

    return build(root) or {}
