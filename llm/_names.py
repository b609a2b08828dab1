"""Validation of the names an LLM returns, before any of them enters the tree.

Whatever the backend, an answer is accepted only as a list (or tuple) of strings where every
name, once stripped of surrounding whitespace, is:

- 1 to ``MAX_NAME_LENGTH`` (64) characters long;
- free of control and format characters (newlines, tabs, NUL, zero-width characters...);
- free of text that looks like an instruction aimed at a later prompt rather than a place or
  hospital name: markup and code fences (``</``, ``<|``, ``|>``, triple backticks) and phrases
  such as "ignore previous", "system prompt", "忽略", "无视" (see ``INSTRUCTION_MARKERS``).
  It is a heuristic against prompt injection travelling down the hierarchy, not a proof.

Duplicates are dropped, first occurrence kept. More than ``max_items`` distinct names is
rejected: an answer that long is a runaway generation, not a list of districts.

One bad item rejects the whole answer: a partial list would enter the tree silently looking
complete, whereas a rejected one is retried (``LLMMalformedOutput`` is retryable).
"""

from __future__ import annotations

import unicodedata

from ._errors import LLMMalformedOutput

__all__ = ["INSTRUCTION_MARKERS", "MAX_NAME_LENGTH", "validate_names"]

MAX_NAME_LENGTH = 64

# Lower-cased substrings; matched against the lower-cased name.
INSTRUCTION_MARKERS = (
    "</",
    "<|",
    "|>",
    "```",
    "ignore previous",
    "ignore all",
    "ignore the above",
    "disregard",
    "system prompt",
    "you are now",
    "忽略",
    "无视",
    "系统提示",
    "提示词",
)

# Cc control, Cf format (zero-width...), Cs surrogate, Co private use, Zl/Zp line breaks.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})

_ALLOWED = (
    f"a list of 1-{MAX_NAME_LENGTH} character names without control characters or instructions"
)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_name(index: int, item: object) -> str:
    if not isinstance(item, str):
        raise LLMMalformedOutput(
            f"LLM output rejected: item {index} is {type(item).__name__} {_show(item)}, "
            f"not a string; expected {_ALLOWED}"
        )
    name = str(item).strip()
    if not name:
        raise LLMMalformedOutput(f"LLM output rejected: item {index} is empty; expected {_ALLOWED}")
    if len(name) > MAX_NAME_LENGTH:
        raise LLMMalformedOutput(
            f"LLM output rejected: item {index} {_show(name)} has {len(name)} characters, "
            f"more than {MAX_NAME_LENGTH}"
        )
    # isprintable() is False for every character of the forbidden categories (and a few more),
    # so the per-character walk runs only for the rare name that fails it.
    for char in "" if name.isprintable() else name:
        if unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            raise LLMMalformedOutput(
                f"LLM output rejected: item {index} {_show(name)} contains control character "
                f"U+{ord(char):04X}; expected {_ALLOWED}"
            )
    lowered = name.lower()
    for marker in INSTRUCTION_MARKERS:
        if marker in lowered:
            raise LLMMalformedOutput(
                f"LLM output rejected: item {index} {_show(name)} contains {marker!r}, which "
                "looks like an instruction or markup, not a name"
            )
    return name


def validate_names(raw: object, *, max_items: int = 500) -> list[str]:
    """Return ``raw`` as a clean, deduplicated list of names, or raise ``LLMMalformedOutput``.

    >>> validate_names([" 天河区", "越秀区", "天河区"])
    ['天河区', '越秀区']
    """
    if max_items < 0:
        raise ValueError(f"max_items must be >= 0, got {max_items}")
    if isinstance(raw, str) or not isinstance(raw, list | tuple):
        raise LLMMalformedOutput(
            f"LLM output rejected: got {type(raw).__name__} {_show(raw)}; expected {_ALLOWED}"
        )
    names = list(dict.fromkeys(_check_name(i, item) for i, item in enumerate(raw)))
    if len(names) > max_items:
        raise LLMMalformedOutput(
            f"LLM output rejected: {len(names)} distinct names, more than the {max_items} allowed"
        )
    return names
