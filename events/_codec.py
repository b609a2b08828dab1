"""msgpack codec for events: an explicit type tag, a schema version, and upcasting on read.

A payload is the msgpack array ``[seq, type_tag, version, fields]`` where ``fields`` maps field
names (``at`` included) to values. A map rather than positional values keeps the log readable
without the code that wrote it, and lets an upcaster add, rename or drop fields.

Upcasting: when a record class changes shape, bump its ``VERSION`` and register a function that
turns the fields of version N into those of version N + 1. Old events then load as the new class.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import msgpack

from ._records import (
    EVENT_TYPES,
    ChildrenFetched,
    Event,
    FetchRetried,
    NodeFailed,
    Recorded,
    children_fetched_v1_to_v2,
    without_tokens_v1_to_v2,
)

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class CodecError(Exception):
    """A payload could not be turned into an event."""


class UnknownEventType(CodecError):
    """The payload names a type this codec does not know."""

    def __init__(self, type_tag: object, offset: int, known: Iterable[str]) -> None:
        self.type_tag = type_tag
        self.offset = offset
        super().__init__(
            f"unknown event type {type_tag!r} in the frame at byte offset {offset}; "
            f"known types: {', '.join(sorted(known))}"
        )


class EventCodec:
    """Encodes events to msgpack payloads and decodes them back, upcasting old versions."""

    def __init__(self, types: Iterable[type[Event]] = EVENT_TYPES) -> None:
        self._types: dict[str, type[Event]] = {}
        self._encoders: dict[type[Event], tuple[str, int, Callable[[Event], dict[str, Any]]]] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}
        self._makers: dict[str, Callable[[dict[str, Any]], Event]] = {}
        self._packer = msgpack.Packer(use_bin_type=True)
        for cls in types:
            self.register(cls)

    def register(self, cls: type[Event]) -> None:
        """Make ``cls`` known under its ``TYPE`` tag (replacing an older class of that tag)."""
        old = self._types.get(cls.TYPE)
        if old is not None:
            self._encoders.pop(old, None)
        self._types[cls.TYPE] = cls
        names = tuple(f.name for f in dataclasses.fields(cls))
        self._encoders[cls] = (cls.TYPE, cls.VERSION, _fields_getter(names))
        self._makers[cls.TYPE] = _maker(cls, names)

    def register_upcaster(self, type_tag: str, from_version: int, fn: Upcaster) -> None:
        """Register ``fn`` to turn fields of ``from_version`` into those of the next version."""
        self._upcasters[(type_tag, from_version)] = fn

    @property
    def type_tags(self) -> tuple[str, ...]:
        """The tags this codec can decode."""
        return tuple(self._types)

    def encode(self, event: Event, seq: int) -> bytes:
        """Pack ``event`` with its sequence number into one payload."""
        shape = self._encoders.get(type(event))
        if shape is None:
            raise CodecError(f"{type(event).__name__} is not a registered event type")
        tag, version, fields = shape
        return self._packer.pack((seq, tag, version, fields(event)))

    def decode(self, payload: bytes | memoryview, offset: int = 0) -> Recorded:
        """Unpack one payload found at byte ``offset`` of the log into a :class:`Recorded`."""
        try:
            seq, tag, version, fields = msgpack.unpackb(
                payload, use_list=False, raw=False, strict_map_key=False
            )
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise CodecError(f"undecodable payload at byte offset {offset}: {exc}") from exc
        cls = self._types.get(tag)
        if cls is None:
            raise UnknownEventType(tag, offset, self._types)
        if version != cls.VERSION:
            fields = self._upcast(tag, version, cls.VERSION, dict(fields), offset)
        try:
            event = self._makers[tag](fields)
        except TypeError as exc:
            raise CodecError(
                f"{tag} v{version} at byte offset {offset} does not fit {cls.__name__}: {exc}"
            ) from exc
        return Recorded(seq, offset, event)

    def _upcast(
        self, tag: str, version: int, target: int, fields: dict[str, Any], offset: int
    ) -> dict[str, Any]:
        if version > target:
            raise CodecError(
                f"{tag} v{version} at byte offset {offset} is newer than this code (v{target}); "
                "upgrade hospital-refresh to read this log"
            )
        while version < target:
            step = self._upcasters.get((tag, version))
            if step is None:
                raise CodecError(
                    f"no upcaster from {tag} v{version} to v{version + 1} "
                    f"(event at byte offset {offset})"
                )
            fields = step(fields)
            version += 1
        return fields


def _fields_getter(names: tuple[str, ...]) -> Callable[[Event], dict[str, Any]]:
    """A function building ``{name: event.name, ...}`` as one dict display.

    Generated like dataclasses' own methods: a dict display is ~5x faster than
    ``dict(zip(names, attrgetter(*names)(event), strict=True))``, and encoding is the hot path of
    every append. ``names`` are dataclass field names, so they are identifiers.
    """
    items = ", ".join(f"{name!r}: e.{name}" for name in names)
    return eval(f"lambda e: {{{items}}}")


def _maker(cls: type[Event], names: tuple[str, ...]) -> Callable[[dict[str, Any]], Event]:
    """A function building ``cls`` from a complete field dict, ~2x faster than ``cls(**f)``.

    Replay builds one event per frame. The generated code sets each slot through its member
    descriptor, skipping the frozen dataclass's by-name ``object.__setattr__``; a dict that is
    not exactly complete (a field left to its default, an unknown key) goes through ``cls(**f)``
    so that defaults apply and a misfit still raises ``TypeError``.
    """
    env: dict[str, Any] = {"new": object.__new__, "cls": cls, "n": len(names)}
    lines = ["def make(f):", "    if len(f) != n:", "        return cls(**f)", "    o = new(cls)"]
    lines.append("    try:")
    for i, name in enumerate(names):
        env[f"s{i}"] = getattr(cls, name).__set__
        lines.append(f"        s{i}(o, f[{name!r}])")
    lines += ["    except KeyError:", "        return cls(**f)", "    return o"]
    exec("\n".join(lines), env)
    return env["make"]


DEFAULT_CODEC = EventCodec()
"""The codec for the events this package defines, with their upcasters."""
DEFAULT_CODEC.register_upcaster(ChildrenFetched.TYPE, 1, children_fetched_v1_to_v2)
DEFAULT_CODEC.register_upcaster(FetchRetried.TYPE, 1, without_tokens_v1_to_v2)
DEFAULT_CODEC.register_upcaster(NodeFailed.TYPE, 1, without_tokens_v1_to_v2)
