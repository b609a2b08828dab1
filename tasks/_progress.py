"""The guide's ProgressTracker: a step counter that tells its callbacks in percent."""

from __future__ import annotations

import logging
from collections.abc import Callable

ProgressCallback = Callable[[int, str], None]

log = logging.getLogger("hospital_refresh.progress")


class ProgressTracker:
    """Counts steps out of ``total_steps`` and calls ``callback(progress, step_name)`` on change.

    As in the guide, ``progress = min(100, int(current_step / total_steps * 100))``::

        tracker = ProgressTracker(100)
        tracker.add_callback(lambda progress, step: print(f"进度: {progress}% - {step}"))
        manager.track(task_id, tracker)   # follow a task's progress

    A callback that raises is logged and does not stop the others.
    """

    def __init__(self, total_steps: int = 100) -> None:
        if not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be an integer >= 1, got {total_steps!r}")
        self.total_steps = total_steps
        self.current_step: float = 0
        self.step_name = ""
        self._callbacks: list[ProgressCallback] = []

    @property
    def progress(self) -> int:
        """Percent done, 0-100."""
        return min(100, int((self.current_step / self.total_steps) * 100))

    def add_callback(self, callback: ProgressCallback) -> None:
        """Call ``callback(progress, step_name)`` on every update."""
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        self._callbacks.append(callback)

    def remove_callback(self, callback: ProgressCallback) -> None:
        """Stop calling ``callback``."""
        self._callbacks.remove(callback)

    def update(self, current_step: float, step_name: str = "") -> None:
        """Move to ``current_step`` (never backwards) and tell the callbacks."""
        self.current_step = max(self.current_step, min(current_step, self.total_steps))
        self.step_name = step_name or self.step_name
        progress = self.progress
        for callback in list(self._callbacks):
            try:
                callback(progress, self.step_name)
            except Exception:
                log.exception("progress callback %r failed", callback)

    def advance(self, steps: int = 1, step_name: str = "") -> None:
        """Move ``steps`` forward."""
        self.update(self.current_step + steps, step_name)
