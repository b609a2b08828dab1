"""Retry policy: how often to ask again and how long to wait (the guide's ``2 ** attempt``)."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Up to ``max_retries`` retries; the wait before retry ``n`` (0-based) is
    ``min(cap, base * 2 ** n)``, spread by +/- ``jitter`` (a fraction) so that calls failed
    together do not come back together. The guide's defaults: 1, 2, 4 seconds.
    """

    max_retries: int = 3
    base: float = 1.0
    cap: float = 60.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {self.max_retries!r}")
        if self.base < 0 or self.cap < 0:
            raise ValueError(f"backoff base and cap must be >= 0, got {self.base!r}, {self.cap!r}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter!r}")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0 for the first retry)."""
        wait = min(self.cap, self.base * 2**attempt)
        if self.jitter and wait:
            wait *= 1 + (rng or random).uniform(-self.jitter, self.jitter)
        return wait
