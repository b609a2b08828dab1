"""What a call cost: ``Usage`` (tokens), and ``Names``, a list of names that carries it.

A metered backend returns ``Names(names, usage)`` from its ``get_*`` methods; ``fetch_children``
always returns ``Names`` (zero usage for a backend that does not say), so the fetch pool can hand
the tokens to the level actor, which journals them with the children.

>>> names = Names(["东城区", "西城区"], Usage(prompt_tokens=120, completion_tokens=30))
>>> names == ["东城区", "西城区"], names.usage.total_tokens
(True, 150)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Names", "Usage", "usage_of"]


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one call (or several, added up) used, as the backend reported them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )

    @classmethod
    def from_response(cls, usage: object) -> Usage:
        """Read the ``usage`` object of a chat-completions answer; anything missing or not a
        whole number >= 0 counts as 0 (some servers omit usage, or send null)."""
        if not isinstance(usage, dict):
            return cls()

        def count(key: str) -> int:
            value = usage.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                return 0
            return int(value)

        return cls(count("prompt_tokens"), count("completion_tokens"))


ZERO_USAGE = Usage()


class Names(list[str]):
    """A list of names that also says what fetching it cost (``usage``).

    It is a ``list``, so it compares, iterates and serialises like one; ``list(names)`` drops
    the usage.
    """

    usage: Usage

    def __init__(self, names: Iterable[str] = (), usage: Usage | None = None) -> None:
        super().__init__(names)
        self.usage = usage if usage is not None else ZERO_USAGE

    def __repr__(self) -> str:
        return f"Names({list.__repr__(self)}, usage={self.usage!r})"


def usage_of(value: object) -> Usage:
    """The ``usage`` that ``value`` carries (a ``Names``), else zero usage."""
    usage = getattr(value, "usage", None)
    return usage if isinstance(usage, Usage) else ZERO_USAGE
