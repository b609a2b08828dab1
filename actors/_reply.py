"""Answering a request's future, which may already have been answered for us.

Stopping the system fails every request still unanswered, so that no caller waits forever;
an actor that gets to such a request afterwards must not crash on answering it again.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import Future, InvalidStateError
from typing import TypeVar

T = TypeVar("T")

STOPPED = "the actor system has stopped"


def answer(reply: Future[T], value: T) -> None:
    """Set ``reply``'s result unless it already has one."""
    with contextlib.suppress(InvalidStateError):
        reply.set_result(value)


def fail(reply: Future[T], exc: BaseException) -> None:
    """Set ``reply``'s exception unless it already has a result."""
    with contextlib.suppress(InvalidStateError):
        reply.set_exception(exc)


def stopped(reply: Future[T]) -> None:
    """Fail ``reply``: the actor system had stopped, the request was never delivered."""
    fail(reply, RuntimeError(STOPPED))


def unanswered_at_stop(reply: Future[T]) -> None:
    """Fail ``reply``: the system stopped with the request delivered but not answered."""
    fail(
        reply,
        RuntimeError(
            f"{STOPPED} before answering; the request may or may not have taken effect "
            "(the event log says which)"
        ),
    )
