"""Sending without surprises during shutdown."""

from __future__ import annotations

from typing import Any

import pykka


def safe_tell(ref: pykka.ActorRef[Any] | None, message: Any) -> bool:
    """``tell`` that returns False instead of raising when the actor has already stopped."""
    if ref is None:
        return False
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        return False
    return True
