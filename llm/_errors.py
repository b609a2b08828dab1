"""Errors an LLM backend raises, split by what the caller should do next.

The split is the whole point: the fetch pool retries a ``RetryableLLMError`` with backoff and
gives up at once on a ``PermanentLLMError``. Anything else a backend raises is a bug in that
backend and is not caught here.

    LLMError
    ├── RetryableLLMError        (worth asking again later)
    │   ├── LLMTimeout           the backend did not answer in time
    │   ├── LLMServerError       the backend failed (HTTP 5xx, connection reset...)
    │   ├── LLMRateLimited       the backend asked us to slow down; see ``retry_after``
    │   └── LLMMalformedOutput   the answer was not a clean list of names
    └── PermanentLLMError        asking again cannot help (bad request, auth, unknown node)

``LLMMalformedOutput`` is retryable because an LLM's next answer to the same prompt usually
differs.
"""

from __future__ import annotations

from ._usage import Usage

__all__ = [
    "LLMError",
    "LLMMalformedOutput",
    "LLMRateLimited",
    "LLMServerError",
    "LLMTimeout",
    "PermanentLLMError",
    "RetryableLLMError",
]


class LLMError(Exception):
    """Base of every error an LLM backend raises on purpose.

    ``usage`` is what the failed call cost when the backend did answer (a malformed answer is
    paid for all the same), else None; the fetch pool journals it with the failure.
    """

    usage: Usage | None = None


class RetryableLLMError(LLMError):
    """The same call may succeed if made again later."""


class LLMTimeout(RetryableLLMError):
    """The backend did not answer in time."""


class LLMServerError(RetryableLLMError):
    """The backend failed on its side (HTTP 5xx, dropped connection...)."""


class LLMRateLimited(RetryableLLMError):
    """The backend asked us to slow down.

    ``retry_after`` is the wait in seconds the backend asked for, or ``None`` if it gave none;
    a retry policy should wait at least that long.
    """

    def __init__(self, message: str | None = None, *, retry_after: float | None = None) -> None:
        if retry_after is not None and retry_after < 0:
            raise ValueError(f"retry_after must be >= 0 seconds, got {retry_after}")
        if message is None:
            wait = "" if retry_after is None else f"; retry after {retry_after:g} s"
            message = f"LLM backend is rate limiting us{wait}"
        super().__init__(message)
        self.retry_after = retry_after


class LLMMalformedOutput(RetryableLLMError):
    """The backend answered, but not with a clean list of names."""


class PermanentLLMError(LLMError):
    """Asking again cannot help: bad request, failed authentication, unknown node."""
