"""The msgpack codec: round trips, type tags and versions, upcasting, clear errors."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events import (
    DEFAULT_CODEC,
    EVENT_TYPES,
    ChildrenFetched,
    CodecError,
    Event,
    EventCodec,
    FetchRetried,
    NodeFailed,
    ProgressChanged,
    Recorded,
    TaskCancelled,
    TaskCreated,
    TaskFailed,
    TaskResumed,
    TasksCleanedUp,
    TaskStarted,
    TaskSucceeded,
    UnknownEventType,
)
from store import EventLog, audit_log

names = st.text(max_size=12)
paths = st.lists(names, max_size=4).map(tuple)
stamps = st.floats(min_value=0, max_value=4e9, allow_nan=False)
base = {"task_id": names, "at": stamps}

STRATEGIES: dict[type[Event], st.SearchStrategy[Event]] = {
    TaskCreated: st.builds(
        TaskCreated,
        **base,
        task_type=st.sampled_from(["full", "province"]),
        target=names | st.none(),
    ),
    TaskStarted: st.builds(TaskStarted, **base),
    ChildrenFetched: st.builds(
        ChildrenFetched,
        **base,
        level=st.sampled_from(["province", "city", "district", "hospital"]),
        path=paths,
        children=st.lists(names, max_size=6).map(tuple),
    ),
    FetchRetried: st.builds(
        FetchRetried,
        **base,
        path=paths,
        attempt=st.integers(1, 10),
        error=names,
        delay_s=st.floats(0, 60, allow_nan=False),
    ),
    NodeFailed: st.builds(NodeFailed, **base, path=paths, error=names),
    ProgressChanged: st.builds(
        ProgressChanged, **base, progress=st.integers(0, 100), current_step=names
    ),
    TaskSucceeded: st.builds(TaskSucceeded, **base),
    TaskFailed: st.builds(
        TaskFailed, **base, error=names, failed_paths=st.lists(paths, max_size=3).map(tuple)
    ),
    TaskCancelled: st.builds(TaskCancelled, **base),
    TaskResumed: st.builds(TaskResumed, **base, retry_paths=st.lists(paths, max_size=3).map(tuple)),
    TasksCleanedUp: st.builds(
        TasksCleanedUp,
        at=stamps,
        task_ids=st.lists(names, max_size=4).map(tuple),
        older_than_hours=st.floats(0, 1e4, allow_nan=False),
    ),
}
any_event = st.one_of(*STRATEGIES.values())


def test_every_event_type_has_a_strategy() -> None:
    """The property tests cover every event type the package defines, and nothing else."""
    assert set(STRATEGIES) == set(EVENT_TYPES)
    assert set(DEFAULT_CODEC.type_tags) == {cls.TYPE for cls in EVENT_TYPES}


@settings(max_examples=100, deadline=None)
@given(event=any_event, seq=st.integers(1, 2**63 - 1), offset=st.integers(0, 2**40))
def test_round_trip_every_event_type(event: Event, seq: int, offset: int) -> None:
    """Decoding an encoded event gives an equal event of the same class, seq and offset."""
    recorded = DEFAULT_CODEC.decode(DEFAULT_CODEC.encode(event, seq), offset)
    assert recorded == Recorded(seq, offset, event)
    assert type(recorded.event) is type(event)


@pytest.mark.parametrize("cls", EVENT_TYPES, ids=lambda c: c.TYPE)
def test_payload_carries_type_tag_version_and_named_fields(cls: type[Event]) -> None:
    """A payload is [seq, tag, version, {field: value}], readable without the code."""
    event = _sample(cls)
    seq, tag, version, fields = msgpack.unpackb(DEFAULT_CODEC.encode(event, 7), raw=False)
    assert (seq, tag, version) == (7, cls.TYPE, cls.VERSION)
    assert set(fields) == {f.name for f in dataclasses.fields(cls)}
    assert fields["at"] == event.at


def _sample(cls: type[Event]) -> Event:
    samples: dict[type[Event], dict[str, Any]] = {
        TaskCreated: {"task_type": "province", "target": "北京市"},
        ChildrenFetched: {"level": "city", "path": ("北京市",), "children": ("北京市",)},
        FetchRetried: {"path": (), "attempt": 1, "error": "x", "delay_s": 1.0},
        NodeFailed: {"path": ("北京市",), "error": "x"},
        ProgressChanged: {"progress": 3, "current_step": "x"},
        TaskFailed: {"error": "x", "failed_paths": (("北京市",),)},
        TasksCleanedUp: {"task_ids": ("a", "b"), "older_than_hours": 1.0},
    }
    kwargs = samples.get(cls, {})
    if cls is not TasksCleanedUp:
        kwargs = {"task_id": "t1", **kwargs}
    return cls(at=1.5, **kwargs)


def test_encoding_an_unregistered_class_is_refused() -> None:
    """Encoding an event the codec does not know is a CodecError naming the class."""
    codec = EventCodec([TaskStarted])
    with pytest.raises(CodecError, match="TaskSucceeded"):
        codec.encode(TaskSucceeded(task_id="t1"), 1)


def test_unknown_type_names_the_type_and_the_byte_offset() -> None:
    """Decoding a tag the codec does not know raises UnknownEventType with tag and offset."""
    payload = DEFAULT_CODEC.encode(TaskCancelled(task_id="t1"), 1)
    with pytest.raises(UnknownEventType, match=r"'TaskCancelled'.*byte offset 4242") as info:
        EventCodec([TaskStarted]).decode(payload, 4242)
    assert info.value.type_tag == "TaskCancelled"
    assert info.value.offset == 4242


def test_unknown_type_in_a_log_names_the_frame_offset(log_path, make_events) -> None:
    """Reading a log with a codec missing a type names the offset of that event's frame."""
    events = make_events()
    with EventLog(log_path) as log:
        recorded = log.append_many(events)
    first_progress = next(r for r in recorded if isinstance(r.event, ProgressChanged))
    codec = EventCodec([TaskCreated, TaskStarted, ChildrenFetched, TaskSucceeded])
    with pytest.raises(UnknownEventType, match=f"byte offset {first_progress.offset}"):
        list(EventLog(log_path, readonly=True, codec=codec).read())
    report = audit_log(log_path, codec)
    assert report.exit_code == 2
    assert report.fault_offset == first_progress.offset
    assert "ProgressChanged" in report.detail


def test_undecodable_payload_is_a_codec_error_with_offset() -> None:
    """A payload that is not msgpack of the right shape is a CodecError naming the offset."""
    with pytest.raises(CodecError, match="byte offset 99"):
        DEFAULT_CODEC.decode(b"\xc1", 99)
    with pytest.raises(CodecError, match="byte offset 17"):
        DEFAULT_CODEC.decode(msgpack.packb([1, 2]), 17)


def test_fields_that_do_not_fit_the_class_are_a_codec_error() -> None:
    """A known tag whose fields do not fit its class names the tag, version and offset."""
    payload = msgpack.packb([1, "TaskStarted", 1, {"task_id": "t", "at": 1.0, "bogus": 2}])
    with pytest.raises(CodecError, match=r"TaskStarted v1 at byte offset 5"):
        DEFAULT_CODEC.decode(payload, 5)


# Upcasting: a record class that changes shape inside the test.


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NoteV1(Event):
    """Version 1: a single free-text field."""

    TYPE: ClassVar[str] = "Note"
    VERSION: ClassVar[int] = 1
    text: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NoteV2(Event):
    """Version 2: ``text`` renamed to ``body`` and a ``lang`` added."""

    TYPE: ClassVar[str] = "Note"
    VERSION: ClassVar[int] = 2
    body: str
    lang: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NoteV3(Event):
    """Version 3: ``tags`` added."""

    TYPE: ClassVar[str] = "Note"
    VERSION: ClassVar[int] = 3
    body: str
    lang: str
    tags: tuple[str, ...]


def v1_to_v2(fields: dict[str, Any]) -> dict[str, Any]:
    fields = dict(fields)
    fields["body"] = fields.pop("text")
    fields["lang"] = "zh"
    return fields


def v2_to_v3(fields: dict[str, Any]) -> dict[str, Any]:
    return {**fields, "tags": ()}


def test_upcasting_loads_a_v1_event_as_v2() -> None:
    """An event written as v1 decodes as the v2 class once an upcaster is registered."""
    payload = EventCodec([NoteV1]).encode(NoteV1(task_id="t1", text="你好", at=2.0), 3)
    codec = EventCodec([NoteV2])
    codec.register_upcaster("Note", 1, v1_to_v2)
    assert codec.decode(payload, 64) == Recorded(
        3, 64, NoteV2(task_id="t1", body="你好", lang="zh", at=2.0)
    )


def test_upcasters_chain_across_versions() -> None:
    """A v1 event is upcast step by step to v3; a v2 event only takes the last step."""
    codec = EventCodec([NoteV3])
    codec.register_upcaster("Note", 1, v1_to_v2)
    codec.register_upcaster("Note", 2, v2_to_v3)
    old = EventCodec([NoteV1]).encode(NoteV1(task_id="t", text="a", at=1.0), 1)
    mid = EventCodec([NoteV2]).encode(NoteV2(task_id="t", body="b", lang="en", at=1.0), 2)
    assert codec.decode(old).event == NoteV3(task_id="t", body="a", lang="zh", tags=(), at=1.0)
    assert codec.decode(mid).event == NoteV3(task_id="t", body="b", lang="en", tags=(), at=1.0)


def test_upcasting_on_read_from_a_log(log_path) -> None:
    """A log written by the v1 code reads back as v2 events; the file is not rewritten."""
    old_codec = EventCodec([*EVENT_TYPES, NoteV1])
    with EventLog(log_path, codec=old_codec) as log:
        log.append(TaskStarted(task_id="t1", at=1.0))
        log.append(NoteV1(task_id="t1", text="旧", at=2.0))
    before = log_path.read_bytes()
    new_codec = EventCodec([*EVENT_TYPES, NoteV2])
    new_codec.register_upcaster("Note", 1, v1_to_v2)
    with EventLog(log_path, codec=new_codec) as log:
        events = [r.event for r in log.read()]
        assert log.next_seq == 3
    assert events == [
        TaskStarted(task_id="t1", at=1.0),
        NoteV2(task_id="t1", body="旧", lang="zh", at=2.0),
    ]
    assert log_path.read_bytes() == before


def test_missing_upcaster_is_a_clear_error() -> None:
    """Without an upcaster for v1, decoding names the tag, both versions and the offset."""
    payload = EventCodec([NoteV1]).encode(NoteV1(task_id="t", text="a"), 1)
    with pytest.raises(CodecError, match=r"no upcaster from Note v1 to v2.*byte offset 30"):
        EventCodec([NoteV2]).decode(payload, 30)


def test_event_newer_than_the_code_is_refused() -> None:
    """A v2 event read by v1 code is an error saying to upgrade, not a silent downcast."""
    payload = EventCodec([NoteV2]).encode(NoteV2(task_id="t", body="a", lang="zh"), 1)
    with pytest.raises(CodecError, match=r"Note v2 at byte offset 8 is newer .*v1"):
        EventCodec([NoteV1]).decode(payload, 8)


def test_registering_a_new_version_replaces_the_old_class() -> None:
    """After registering v2 under the same tag, encoding a v1 instance is refused."""
    codec = EventCodec([NoteV1])
    codec.register(NoteV2)
    assert codec.type_tags == ("Note",)
    with pytest.raises(CodecError, match="NoteV1 is not a registered event type"):
        codec.encode(NoteV1(task_id="t", text="a"), 1)
