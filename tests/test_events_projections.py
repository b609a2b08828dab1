"""Projections: pure folds of hand-written event lists into task status and the fetched tree."""

from __future__ import annotations

import msgpack
import pytest
from conftest import T0, EventFactory
from hypothesis import given, settings
from hypothesis import strategies as st

from events import (
    CANCELLED,
    DEFAULT_CODEC,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    Event,
    Projection,
    Recorded,
    TaskResumed,
    step_label,
)


def fold(events: list[Event]) -> Projection:
    """Fold bare events with consecutive sequence numbers, as the log would number them."""
    return Projection().apply_all(Recorded(i, 0, e) for i, e in enumerate(events, 1))


def test_new_task_is_pending(make_events: EventFactory) -> None:
    """TaskCreated alone gives a PENDING task at 0% with its type, target and creation time."""
    status = fold([make_events.created("t1")]).status("t1")
    assert status is not None
    assert status["status"] == PENDING
    assert status["progress"] == 0
    assert (status["task_id"], status["task_type"], status["target"]) == (
        "t1",
        "province",
        "广东省",
    )
    assert status["created_at"] == "2025-06-15T15:06:40.000+00:00"
    assert status["started_at"] is None
    assert status["finished_at"] is None
    assert status["error"] is None


def test_status_has_the_fields_get_task_status_returns(make_events: EventFactory) -> None:
    """The status dict carries every field the issue lists for get_task_status."""
    status = fold(make_events()).status("t1")
    assert status is not None
    assert {
        "task_id",
        "task_type",
        "target",
        "status",
        "progress",
        "current_step",
        "created_at",
        "started_at",
        "finished_at",
        "error",
        "counts",
        "failed_paths",
    } <= set(status)
    assert set(status["counts"]) == {"provinces", "cities", "districts", "hospitals"}


def test_lifecycle_pending_running_succeeded(make_events: EventFactory) -> None:
    """Started makes a task RUNNING with a start time; succeeded makes it SUCCEEDED at 100%."""
    f = make_events
    projection = fold([f.created("t1"), f.started("t1")])
    status = projection.status("t1")
    assert status is not None
    assert status["status"] == RUNNING
    assert status["started_at"] == "2025-06-15T15:06:41.000+00:00"
    projection.apply(Recorded(3, 0, f.succeeded("t1")))
    status = projection.status("t1")
    assert status is not None
    assert status["status"] == SUCCEEDED
    assert status["progress"] == 100
    assert status["finished_at"] == "2025-06-15T15:06:42.000+00:00"


def test_lifecycle_failed_keeps_error_and_failed_paths(make_events: EventFactory) -> None:
    """TaskFailed gives FAILED with the error and the failed paths, and progress below 100."""
    f = make_events
    events = make_events(outcome=None)
    events.append(f.node_failed("t1", ("广东省", "佛山市"), "timeout"))
    events.append(f.failed("t1", "1 node failed", (("广东省", "佛山市"), ("广东省", "珠海市"))))
    status = fold(events).status("t1")
    assert status is not None
    assert status["status"] == FAILED
    assert status["error"] == "1 node failed"
    assert status["failed_paths"] == [["广东省", "佛山市"], ["广东省", "珠海市"]]
    assert status["progress"] < 100
    assert status["finished_at"] is not None


def test_lifecycle_cancelled(make_events: EventFactory) -> None:
    """TaskCancelled gives CANCELLED with a finish time; later progress is ignored."""
    f = make_events
    events = [f.created("t1"), f.started("t1"), f.progress("t1", 10), f.cancelled("t1")]
    events.append(f.progress("t1", 50))
    status = fold(events).status("t1")
    assert status is not None
    assert status["status"] == CANCELLED
    assert status["progress"] == 10
    assert status["finished_at"] is not None


def test_counts_per_level(make_events: EventFactory) -> None:
    """A province task counts its province, cities, districts and hospitals as fetched."""
    status = fold(make_events()).status("t1")
    assert status is not None
    assert status["counts"] == {"provinces": 1, "cities": 2, "districts": 3, "hospitals": 4}


def test_full_task_counts_provinces_from_the_country_list(make_events: EventFactory) -> None:
    """A full task's root list (the country's) counts as provinces."""
    f = make_events
    events = [
        f.created("t1", "full", None),
        f.started("t1"),
        f.fetched("t1", (), ("北京市", "吉林省", "广东省")),
        f.fetched("t1", ("吉林省",), ("长春市",)),
    ]
    status = fold(events).status("t1")
    assert status is not None
    assert status["counts"] == {"provinces": 3, "cities": 1, "districts": 0, "hospitals": 0}


def test_progress_is_monotonic_and_100_only_at_succeeded(make_events: EventFactory) -> None:
    """Progress never goes back, is capped at 99 while running, and is 100 only on success."""
    f = make_events
    projection = fold([f.created("t1"), f.started("t1")])
    seen = []
    for value in (10, 40, 30, 99, 100, 120, 5):
        projection.apply(Recorded(0, 0, f.progress("t1", value)))
        status = projection.status("t1")
        assert status is not None
        seen.append(status["progress"])
    assert seen == [10, 40, 40, 99, 99, 99, 99]
    projection.apply(Recorded(0, 0, f.succeeded("t1")))
    assert projection.tasks["t1"].progress == 100


def test_progress_is_weighted_by_subtree(make_events: EventFactory) -> None:
    """Each province weighs an equal share of the root, each city an equal share of its province."""
    f = make_events
    state = fold([f.created("t1", "full", None), f.started("t1")]).tasks["t1"]
    steps = [
        (f.fetched("t1", (), ("A", "B")), 0),
        (f.fetched("t1", ("A",), ("a1", "a2")), 0),
        (f.fetched("t1", ("A", "a1"), ("d1",)), 0),
        (f.fetched("t1", ("A", "a1", "d1"), ("h1", "h2")), 25),
        (f.node_failed("t1", ("A", "a2")), 50),
        (f.fetched("t1", ("B",), ()), 99),
    ]
    projection = Projection()
    projection.tasks["t1"] = state
    for event, expected in steps:
        projection.apply_event(event)
        assert state.computed_progress() == expected, event
    assert state.done_weight == pytest.approx(1.0)
    assert state.frontier() == []


def test_progress_does_not_go_back_as_the_tree_grows(make_events: EventFactory) -> None:
    """Discovering many new nodes does not lower progress (unlike done / discovered)."""
    f = make_events
    events = [
        f.created("t1", "full", None),
        f.fetched("t1", (), ("A", "B")),
        f.fetched("t1", ("B",), ()),
    ]
    projection = fold(events)
    state = projection.tasks["t1"]
    assert state.computed_progress() == 50
    projection.apply_event(f.fetched("t1", ("A",), tuple(f"city{i}" for i in range(50))))
    assert state.computed_progress() == 50


@st.composite
def walks(draw: st.DrawFn) -> list[tuple[tuple[str, ...], tuple[str, ...] | None]]:
    """A random full-task walk: (path, children) fetched, or (path, None) failed, parents first."""
    out: list[tuple[tuple[str, ...], tuple[str, ...] | None]] = []
    frontier: list[tuple[str, ...]] = [()]
    while frontier:
        path = frontier.pop(draw(st.integers(0, len(frontier) - 1)))
        if path and draw(st.integers(0, 9)) == 0:
            out.append((path, None))
            continue
        width = draw(st.integers(0, 3 if len(path) < 3 else 4))
        children = tuple(f"{len(path)}-{i}" for i in range(width))
        out.append((path, children))
        if len(path) < 3:
            frontier.extend((*path, c) for c in children)
    return out


@settings(max_examples=60, deadline=None)
@given(walk=walks())
def test_computed_progress_is_monotonic_on_any_walk(walk) -> None:
    """On any fetch order and any failures, computed progress never decreases and ends at 99."""
    f = EventFactory()
    projection = fold([f.created("t1", "full", None), f.started("t1")])
    state = projection.tasks["t1"]
    last = 0
    for path, children in walk:
        if children is None:
            projection.apply_event(f.node_failed("t1", path))
        else:
            projection.apply_event(f.fetched("t1", path, children))
        assert state.computed_progress() >= last
        last = state.computed_progress()
    assert state.frontier() == []
    assert state.done_weight == pytest.approx(1.0)
    assert last == 99


def test_duplicate_children_fetched_is_idempotent(make_events: EventFactory) -> None:
    """A second list for a fetched path changes nothing: counts, tree and frontier stay."""
    f = make_events
    events = make_events(outcome=None)
    once = fold(events)
    events.append(f.fetched("t1", ("广东省", "广州市"), ("天河区", "越秀区")))
    events.append(f.fetched("t1", ("广东省", "广州市"), ("海珠区",)))
    twice = fold(events)
    assert twice.status("t1")["counts"] == once.status("t1")["counts"]
    assert twice.tree("t1") == once.tree("t1")
    assert twice.tasks["t1"].done_weight == once.tasks["t1"].done_weight


def test_fetch_after_failure_replaces_the_failure(make_events: EventFactory) -> None:
    """A node that failed and is fetched later (a resume) is no longer failed nor counted twice."""
    f = make_events
    events = [
        f.created("t1", "full", None),
        f.fetched("t1", (), ("A", "B")),
        f.fetched("t1", ("A",), ()),
        f.node_failed("t1", ("B",)),
    ]
    projection = fold(events)
    state = projection.tasks["t1"]
    assert state.computed_progress() == 99
    assert projection.status("t1")["failed_paths"] == [["B"]]
    projection.apply_event(f.fetched("t1", ("B",), ("b1",)))
    assert projection.status("t1")["failed_paths"] == []
    assert state.computed_progress() == 50
    assert state.frontier() == [("B", "b1")]


def test_resume_puts_failed_nodes_back_on_the_frontier(make_events: EventFactory) -> None:
    """TaskResumed makes a failed task RUNNING again with its failed nodes pending, not done."""
    f = make_events
    events = [
        f.created("t1", "full", None),
        f.started("t1"),
        f.fetched("t1", (), ("A", "B")),
        f.fetched("t1", ("A",), ()),
        f.node_failed("t1", ("B",), "timeout"),
        f.failed("t1", "1 node failed", (("B",),)),
    ]
    projection = fold(events)
    state = projection.tasks["t1"]
    assert state.computed_progress() == 99
    projection.apply_event(TaskResumed(task_id="t1", retry_paths=(("B",),), at=f.tick()))
    status = projection.status("t1")
    assert status is not None
    assert status["status"] == RUNNING
    assert status["error"] is None
    assert status["finished_at"] is None
    assert status["failed_paths"] == []
    assert state.frontier() == [("B",)]
    assert state.computed_progress() == 50


@pytest.mark.parametrize("outcome", ["succeeded", "failed", "cancelled"])
def test_an_ended_task_changes_no_more(make_events: EventFactory, outcome: str) -> None:
    """After its end, whatever a racing writer appended for a task (a late list, a retry, a
    failed node, progress, another end, a start) leaves its status and tree as they were."""
    f = make_events
    events = make_events("t1", outcome=outcome)
    ended = fold(events)
    late = [
        f.fetched("t1", ("广东省", "深圳市"), ("南山区", "福田区")),
        f.retried("t1", ("广东省", "珠海市")),
        f.node_failed("t1", ("广东省", "广州市")),
        f.progress("t1", 99, "late"),
        f.started("t1"),
        f.cancelled("t1"),
        f.succeeded("t1"),
        f.failed("t1", "late"),
    ]
    after = fold(events + late)
    assert after.status("t1") == ended.status("t1")
    assert after.tree("t1") == ended.tree("t1")


@pytest.mark.parametrize(
    ("outcome", "resumed"), [("failed", True), ("succeeded", False), ("cancelled", False)]
)
def test_only_a_failed_task_is_resumed_by_task_resumed(
    make_events: EventFactory, outcome: str, resumed: bool
) -> None:
    """TaskResumed makes a FAILED task RUNNING again; a SUCCEEDED or CANCELLED one stays ended."""
    f = make_events
    events = make_events("t1", outcome=outcome)
    before = fold(events).status("t1")
    assert before is not None
    projection = fold([*events, TaskResumed(task_id="t1", retry_paths=(), at=f.tick())])
    after = projection.status("t1")
    assert after is not None
    assert after["status"] == (RUNNING if resumed else before["status"])


def test_cleanup_removes_the_named_tasks_only(make_events: EventFactory) -> None:
    """TasksCleanedUp drops the named tasks; others stay; later events of a dropped task do not
    resurrect it."""
    f = make_events
    events = [*make_events("t1"), *make_events("t2"), *make_events("t3", outcome=None)]
    events.append(f.cleaned("t1", "t2"))
    events.append(f.progress("t1", 50))
    projection = fold(events)
    assert projection.status("t1") is None
    assert projection.tree("t2") is None
    assert [s["task_id"] for s in projection.list_status()] == ["t3"]


def test_events_of_an_unknown_task_are_ignored(make_events: EventFactory) -> None:
    """Events naming a task the log never created leave the projection empty."""
    f = make_events
    projection = fold([f.started("x"), f.fetched("x", (), ("A",)), f.succeeded("x")])
    assert projection.tasks == {}
    assert projection.events_applied == 3
    assert projection.last_seq == 3


def test_list_status_filters_by_status(make_events: EventFactory) -> None:
    """list_status gives every task oldest first, or only those in the given status."""
    events = [
        *make_events("a"),
        *make_events("b", outcome="failed"),
        *make_events("c", outcome=None),
    ]
    projection = fold(events)
    assert [s["task_id"] for s in projection.list_status()] == ["a", "b", "c"]
    assert [s["task_id"] for s in projection.list_status(FAILED)] == ["b"]
    assert [s["task_id"] for s in projection.list_status(RUNNING)] == ["c"]


def test_tree_nests_the_fetched_hierarchy(make_events: EventFactory) -> None:
    """tree() nests cities, districts and hospitals under the root; hospitals map to None."""
    tree = fold(make_events()).tree("t1")
    assert tree is not None
    assert tree["root"] == ["广东省"]
    assert tree["children"] == {
        "广州市": {
            "天河区": {"中山大学附属第三医院": None, "暨南大学附属第一医院": None},
            "越秀区": {"中山大学附属第一医院": None},
        },
        "深圳市": {"南山区": {"深圳市南山区人民医院": None}},
    }
    assert tree["frontier"] == []
    assert tree["failed"] == {}


def test_frontier_lists_discovered_but_unfetched_nodes(make_events: EventFactory) -> None:
    """The frontier is every node discovered and neither fetched nor failed: what resume needs."""
    f = make_events
    events = [
        f.created("t1"),
        f.started("t1"),
        f.fetched("t1", ("广东省",), ("广州市", "深圳市", "珠海市")),
        f.fetched("t1", ("广东省", "广州市"), ("天河区",)),
        f.node_failed("t1", ("广东省", "珠海市")),
    ]
    projection = fold(events)
    assert projection.tasks["t1"].frontier() == [
        ("广东省", "深圳市"),
        ("广东省", "广州市", "天河区"),
    ]
    tree = projection.tree("t1")
    assert tree is not None
    assert tree["children"] == {"广州市": {"天河区": None}, "深圳市": None, "珠海市": None}
    assert tree["failed"] == {"广东省 / 珠海市": "boom"}
    assert projection.status("t1")["pending_nodes"] == 2


def test_a_new_task_frontier_is_its_root(make_events: EventFactory) -> None:
    """Before any fetch, the frontier is the task's root: the country or its province."""
    f = make_events
    projection = fold([f.created("full1", "full", None), f.created("p1", "province", "北京市")])
    assert projection.tasks["full1"].frontier() == [()]
    assert projection.tasks["p1"].frontier() == [("北京市",)]


def test_same_name_under_two_cities_is_kept_apart(make_events: EventFactory) -> None:
    """朝阳区 in Beijing and in Changchun are two nodes: own hospitals, own failure, own weight."""
    f = make_events
    beijing = ("北京市", "北京市", "朝阳区")
    changchun = ("吉林省", "长春市", "朝阳区")
    events = [
        f.created("t1", "full", None),
        f.fetched("t1", (), ("北京市", "吉林省")),
        f.fetched("t1", ("北京市",), ("北京市",)),
        f.fetched("t1", ("吉林省",), ("长春市",)),
        f.fetched("t1", ("北京市", "北京市"), ("朝阳区",)),
        f.fetched("t1", ("吉林省", "长春市"), ("朝阳区", "南关区")),
        f.fetched("t1", changchun, ("吉林大学第一医院",)),
    ]
    projection = fold(events)
    state = projection.tasks["t1"]
    assert state.weights[beijing] == 0.5
    assert state.weights[changchun] == 0.25
    assert beijing in state.frontier()
    assert changchun not in state.frontier()
    projection.apply_event(f.node_failed("t1", beijing, "timeout"))
    tree = projection.tree("t1")
    assert tree is not None
    assert tree["children"]["北京市"]["北京市"] == {"朝阳区": None}
    assert tree["children"]["吉林省"]["长春市"]["朝阳区"] == {"吉林大学第一医院": None}
    assert projection.status("t1")["failed_paths"] == [list(beijing)]
    assert projection.status("t1")["counts"]["hospitals"] == 1


def test_current_step_names_the_last_fetched_list(make_events: EventFactory) -> None:
    """After a fetch the current step says where, in words."""
    f = make_events
    path = ("广东省", "广州市", "天河区")
    events = [f.created("t1"), f.started("t1"), f.fetched("t1", path, ("某医院",))]
    assert fold(events).status("t1")["current_step"] == "广东省 / 广州市 / 天河区: 医院列表"
    assert step_label((), "province") == "全国: 省份列表"


def test_same_events_give_the_same_state(make_events: EventFactory) -> None:
    """Folding the same events twice, or after an encode/decode round trip, gives equal state."""
    events = [*make_events("t1"), *make_events("t2", outcome="failed")]
    first = fold(events).to_state()
    again = fold(events).to_state()
    decoded = [DEFAULT_CODEC.decode(DEFAULT_CODEC.encode(e, 1)).event for e in events]
    assert first == again == fold(decoded).to_state()


def test_state_survives_a_msgpack_round_trip(make_events: EventFactory) -> None:
    """to_state packed and unpacked (as a snapshot does) rebuilds an equal projection."""
    f = make_events
    events = [*make_events("t1"), *make_events("t2", outcome=None)]
    events.append(f.node_failed("t2", ("广东省", "珠海市")))
    original = fold(events)
    packed = msgpack.packb(original.to_state(), use_bin_type=True)
    state = msgpack.unpackb(packed, use_list=False, raw=False, strict_map_key=False)
    restored = Projection.from_state(state)
    assert restored.to_state() == original.to_state()
    assert restored.list_status() == original.list_status()
    assert restored.tree("t2") == original.tree("t2")


def test_state_of_another_version_is_refused() -> None:
    """from_state raises ValueError on a state layout of another version."""
    state = Projection().to_state()
    state["version"] = -1
    with pytest.raises(ValueError, match="version -1"):
        Projection.from_state(state)


def test_fixture_clock_starts_at_t0(make_events: EventFactory) -> None:
    """The event factory hands out deterministic timestamps from T0."""
    assert [e.at for e in make_events()[:2]] == [T0, T0 + 1]
