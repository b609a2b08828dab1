"""GET /tasks/{id}/progress: Server-Sent Events over a real uvicorn, received to the end."""

from __future__ import annotations

import itertools
import threading

import pytest
from conftest import ManagerFactory, ServerFactory
from fakes import FakeLLMService, make_tree

FINISHED = ("SUCCEEDED", "FAILED", "CANCELLED")


def test_progress_streams_every_change_until_the_task_ends(live_server: ServerFactory) -> None:
    """A stream opened on a PENDING task gets its status, then each change of progress, step or
    status as the task runs (never going back), then one 'end' event, and then it closes."""
    server = live_server()
    with server.client() as client, server.client() as other:
        task_id = other.post("/tasks", json={"task_type": "province", "target": "广东省"}).json()[
            "task_id"
        ]
        events = []
        with client.stream("GET", f"/tasks/{task_id}/progress") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            stream = server.iter_sse(response)
            events.append(next(stream))
            assert other.post(f"/tasks/{task_id}/start").status_code == 200
            events.extend(stream)  # to the end: the server closes the stream
        final = client.get(f"/tasks/{task_id}").json()
    names = [name for name, _ in events]
    statuses = [data for name, data in events if name == "status"]
    assert names == ["status"] * len(statuses) + ["end"]
    assert events[-1][1] == {"task_id": task_id, "status": "SUCCEEDED"}
    assert (statuses[0]["status"], statuses[0]["progress"]) == ("PENDING", 0)
    assert statuses[-1] == final
    assert final["status"] == "SUCCEEDED"
    assert final["progress"] == 100
    assert len(statuses) > 10  # 广东省 has 21 cities: progress moves many times
    progress = [s["progress"] for s in statuses]
    assert progress == sorted(progress)  # monotonic
    keys = [(s["status"], s["progress"], s["current_step"]) for s in statuses]
    assert all(a != b for a, b in itertools.pairwise(keys))  # each one a change
    assert {s["task_id"] for s in statuses} == {task_id}


def test_a_finished_tasks_stream_is_its_status_then_end(live_server: ServerFactory) -> None:
    """The stream of a task that has already ended is its final status and 'end', at once."""
    server = live_server()
    with server.client() as client:
        task_id = client.post("/tasks", json={"task_type": "full"}).json()["task_id"]
        client.post(f"/tasks/{task_id}/cancel")
        events = server.follow(client, task_id)
        again = server.follow(client, task_id)
    assert [name for name, _ in events] == ["status", "end"]
    assert events[0][1]["status"] == "CANCELLED"
    assert events[1][1] == {"task_id": task_id, "status": "CANCELLED"}
    assert again == events


def test_a_stream_ends_when_its_task_is_cancelled(
    open_manager: ManagerFactory, live_server: ServerFactory
) -> None:
    """A client following a RUNNING task sees CANCELLED and 'end' when another client cancels
    it, and other tasks' changes never reach its stream."""
    service = FakeLLMService(
        make_tree(["广东省", "湖南省"]), hold=lambda path: path[:1] == ("广东省",)
    )
    server = live_server(open_manager(service))
    with server.client() as client, server.client() as other:
        held = other.post("/tasks", json={"task_type": "province", "target": "广东省"}).json()
        busy = other.post("/tasks", json={"task_type": "province", "target": "湖南省"}).json()
        other.post(f"/tasks/{held['task_id']}/start")
        events = []
        with client.stream("GET", f"/tasks/{held['task_id']}/progress") as response:
            stream = server.iter_sse(response)
            events.append(next(stream))
            other.post(f"/tasks/{busy['task_id']}/start")
            server.follow(other, busy["task_id"])  # runs to its end meanwhile
            assert other.post(f"/tasks/{held['task_id']}/cancel").status_code == 200
            events.extend(stream)
        service.release()
    assert events[0][1]["status"] == "RUNNING"
    assert [data["status"] for name, data in events if name == "status"] == [
        "RUNNING",
        "CANCELLED",
    ]
    assert events[-1] == ("end", {"task_id": held["task_id"], "status": "CANCELLED"})


def test_a_stream_needs_the_token_when_one_is_set(
    live_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a token configured the stream is a 401 without it, and streams to the end with it."""
    monkeypatch.setenv("HOSPITAL_REFRESH_TOKEN", "tok")
    server = live_server()
    with server.client("tok") as client, server.client() as anonymous:
        task_id = client.post("/tasks", json={"task_type": "province", "target": "北京市"}).json()[
            "task_id"
        ]
        refused = anonymous.get(f"/tasks/{task_id}/progress")
        client.post(f"/tasks/{task_id}/start")
        events = server.follow(client, task_id)
    assert refused.status_code == 401
    assert events[-1] == ("end", {"task_id": task_id, "status": "SUCCEEDED"})


def test_shutdown_ends_open_streams(live_server: ServerFactory) -> None:
    """Shutting the server down ends a stream that would otherwise wait forever (a PENDING
    task's), so the graceful shutdown completes; the client sees the stream close without an
    'end' event."""
    # No graceful-shutdown timeout: only the app ending its streams lets the shutdown finish.
    server = live_server(server_options={"timeout_graceful_shutdown": None})
    with server.client() as client:
        task_id = client.post("/tasks", json={"task_type": "full"}).json()["task_id"]
        events = []
        with client.stream("GET", f"/tasks/{task_id}/progress") as response:
            stream = server.iter_sse(response)
            events.append(next(stream))
            stopper = threading.Thread(target=server.stop)
            stopper.start()
            events.extend(stream)
            stopper.join()
    assert [name for name, _ in events] == ["status"]
    assert events[0][1]["status"] == "PENDING"
    assert not server.server.force_exit  # it shut down gracefully, not by force
