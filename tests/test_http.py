"""The HTTP API over a real uvicorn on a loopback port: every endpoint, every error code, the
token, the body bound, the lifespan, a restart on the same log, and mounting in another app."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import LiveServer, ManagerFactory, ServerFactory, simulated_tree
from fakes import FakeLLMService, fail_first, make_tree

from llm import LLMServerError
from store import iter_valid

BEIJING = simulated_tree("北京市")
"""What a 北京市 task fetches on the simulated backend, ``path -> children``."""


def create(client: httpx.Client, task_type: str = "province", target: str | None = "北京市") -> str:
    """POST /tasks; the new task's id."""
    response = client.post("/tasks", json={"task_type": task_type, "target": target})
    assert response.status_code == 201, response.text
    return response.json()["task_id"]


def run(server: LiveServer, client: httpx.Client, target: str = "北京市") -> dict[str, Any]:
    """Create and start a province task, follow its progress to the end; its final status."""
    task_id = create(client, target=target)
    assert client.post(f"/tasks/{task_id}/start").status_code == 200
    server.follow(client, task_id)
    return client.get(f"/tasks/{task_id}").json()


def nested(tree: dict[tuple[str, ...], tuple[str, ...]], path: tuple[str, ...]) -> Any:
    """``path -> children`` as the nested dicts of GET /tasks/{id}/tree (leaves are None)."""
    if path not in tree:
        return None
    return {name: nested(tree, (*path, name)) for name in tree[path]}


# --- creating, starting, reading -----------------------------------------------------------------


def test_create_answers_201_with_the_task_id_and_its_location(live_server: ServerFactory) -> None:
    """POST /tasks creates a PENDING task (the alias 北京 becomes 北京市) and says where it is."""
    server = live_server()
    with server.client() as client:
        response = client.post("/tasks", json={"task_type": "province", "target": "北京"})
        assert response.status_code == 201
        task_id = response.json()["task_id"]
        assert response.headers["location"] == f"{server.url}/tasks/{task_id}"
        status = client.get(f"/tasks/{task_id}").json()
    assert status["task_id"] == task_id
    assert (status["status"], status["progress"], status["target"]) == ("PENDING", 0, "北京市")


BAD_CREATES: list[tuple[dict[str, Any] | bytes, str | None]] = [
    ({"task_type": "weekly"}, "unknown task_type 'weekly': allowed values are"),
    ({"task_type": "province"}, "a 'province' task needs a target"),
    ({"task_type": "province", "target": "  "}, "a 'province' task needs a target"),
    ({"task_type": "full", "target": "北京市"}, "a 'full' task takes no target"),
    ({"task_type": "full", "when": "now"}, None),
    ({"target": "北京市"}, None),
    ({"task_type": 5}, None),
    ({"task_type": "province", "target": "省" * 65}, None),
    (b"task_type=full", None),
]
"""POST /tasks bodies that are refused, with the manager's message (None: pydantic's list)."""


def test_bad_create_input_is_422_with_the_reason(live_server: ServerFactory) -> None:
    """A request the manager refuses is a 422 carrying its message; a malformed body (unknown
    field, wrong type, too long, not JSON) is a 422 from validation; no task is created."""
    server = live_server()
    with server.client() as client:
        for body, message in BAD_CREATES:
            if isinstance(body, bytes):
                response = client.post(
                    "/tasks", content=body, headers={"Content-Type": "application/json"}
                )
            else:
                response = client.post("/tasks", json=body)
            assert response.status_code == 422, body
            detail = response.json()["detail"]
            if message is None:
                assert isinstance(detail, list), body  # pydantic's list of problems
                assert detail, body
            else:
                assert detail.startswith(message), body
        assert client.get("/tasks").json() == []


def test_a_task_runs_to_the_end_over_http(live_server: ServerFactory) -> None:
    """Start answers the RUNNING status; the task ends SUCCEEDED at 100% with the whole tree
    of 北京市 that the simulated backend knows, and its counts."""
    server = live_server()
    with server.client() as client:
        task_id = create(client)
        started = client.post(f"/tasks/{task_id}/start")
        assert started.status_code == 200
        assert started.json()["status"] in ("RUNNING", "SUCCEEDED")
        server.follow(client, task_id)
        status = client.get(f"/tasks/{task_id}").json()
        tree = client.get(f"/tasks/{task_id}/tree").json()
    assert (status["status"], status["progress"], status["error"]) == ("SUCCEEDED", 100, None)
    cities = BEIJING[("北京市",)]
    districts = [(*("北京市",), c, d) for c in cities for d in BEIJING[("北京市", c)]]
    assert status["counts"] == {
        "provinces": 1,  # the root of a province task counts
        "cities": len(cities),
        "districts": len(districts),
        "hospitals": sum(len(BEIJING[d]) for d in districts),
    }
    assert {k: tree[k] for k in ("task_id", "root", "children", "frontier", "failed")} == {
        "task_id": task_id,
        "root": ["北京市"],
        "children": nested(BEIJING, ("北京市",)),
        "frontier": [],
        "failed": {},
    }


def test_list_filters_by_status(live_server: ServerFactory) -> None:
    """GET /tasks lists every task oldest first; ?status= keeps one status; an unknown status
    is a 422 naming the allowed ones."""
    server = live_server()
    with server.client() as client:
        first, second = create(client), create(client, "full", None)
        assert client.post(f"/tasks/{first}/cancel").status_code == 200
        everything = client.get("/tasks").json()
        pending = client.get("/tasks", params={"status": "PENDING"}).json()
        cancelled = client.get("/tasks", params={"status": "CANCELLED"}).json()
        bad = client.get("/tasks", params={"status": "DONE"})
    assert [s["task_id"] for s in everything] == [first, second]
    assert [s["task_id"] for s in pending] == [second]
    assert [s["task_id"] for s in cancelled] == [first]
    assert bad.status_code == 422
    assert bad.json()["detail"].startswith("unknown status 'DONE': allowed values are PENDING")


# --- the audit trail -----------------------------------------------------------------------------


def test_events_are_the_tasks_trail_from_the_log_paged_by_seq(
    live_server: ServerFactory, log_path: Path
) -> None:
    """GET /tasks/{id}/events pages through exactly the task's events as the log holds them
    (another task's are left out), in seq order, without gaps or repeats."""
    server = live_server()
    with server.client() as client:
        other = create(client, "full", None)
        status = run(server, client)
        task_id = status["task_id"]
        pages, after = [], 0
        while True:
            page = client.get(
                f"/tasks/{task_id}/events", params={"after_seq": after, "limit": 7}
            ).json()
            pages.append(page)
            after = page["next_after_seq"]
            if not page["more"]:
                break
        whole = client.get(f"/tasks/{task_id}/events", params={"limit": 1000}).json()
        past_the_end = client.get(f"/tasks/{task_id}/events", params={"after_seq": after}).json()
    _, records, _ = iter_valid(str(log_path))
    expected = [r.to_dict() for r in records if r.event.task_id == task_id]
    paged = [event for page in pages for event in page["events"]]
    assert paged == whole["events"] == expected
    assert all(len(page["events"]) == 7 for page in pages[:-1])
    assert len(pages) > 2
    assert paged[0]["type"] == "TaskCreated"
    assert paged[-1]["type"] == "TaskSucceeded"
    assert all(event["task_id"] != other for event in paged)
    assert past_the_end == {
        "task_id": task_id,
        "events": [],
        "next_after_seq": after,
        "more": False,
    }


def test_bad_event_page_parameters_are_422(live_server: ServerFactory) -> None:
    """limit must be 1..1000 and after_seq a number >= 0."""
    server = live_server()
    with server.client() as client:
        task_id = create(client)
        for params in ({"limit": 0}, {"limit": 1001}, {"after_seq": -1}, {"after_seq": "x"}):
            response = client.get(f"/tasks/{task_id}/events", params=params)
            assert response.status_code == 422, params


# --- error codes ---------------------------------------------------------------------------------


def test_an_unknown_task_is_404(live_server: ServerFactory) -> None:
    """Every per-task endpoint answers 404 with a JSON detail naming the id."""
    server = live_server()
    with server.client() as client:
        create(client)
        for method, suffix in [
            ("GET", ""),
            ("GET", "/tree"),
            ("GET", "/events"),
            ("GET", "/progress"),
            ("POST", "/start"),
            ("POST", "/cancel"),
            ("POST", "/resume"),
        ]:
            response = client.request(method, f"/tasks/0123456789ab{suffix}")
            assert response.status_code == 404, suffix
            detail = response.json()["detail"]
            assert detail.startswith("no task '0123456789ab'"), suffix


def test_a_wrong_state_is_409_with_the_reason(live_server: ServerFactory) -> None:
    """Start of a task that is not PENDING, cancel of a finished one and a refused resume are
    409s saying what state the task is in; the task is left as it was."""
    server = live_server()
    with server.client() as client:
        done = run(server, client)["task_id"]
        pending = create(client)
        answers = {
            "start twice": client.post(f"/tasks/{done}/start"),
            "cancel finished": client.post(f"/tasks/{done}/cancel"),
            "resume succeeded": client.post(f"/tasks/{done}/resume"),
            "resume pending": client.post(f"/tasks/{pending}/resume"),
        }
        assert client.post(f"/tasks/{pending}/cancel").status_code == 200
        answers["start cancelled"] = client.post(f"/tasks/{pending}/start")
        answers["cancel twice"] = client.post(f"/tasks/{pending}/cancel")
        final = {s["task_id"]: s["status"] for s in client.get("/tasks").json()}
    assert {name: r.status_code for name, r in answers.items()} == dict.fromkeys(answers, 409)
    detail = {name: r.json()["detail"] for name, r in answers.items()}
    assert detail["start twice"] == f"task {done} is SUCCEEDED; only a PENDING task can be started"
    assert detail["cancel finished"] == (
        f"task {done} is SUCCEEDED; only a PENDING or RUNNING task can be cancelled"
    )
    assert detail["resume succeeded"] == (
        f"task {done} cannot be resumed: it is SUCCEEDED; "
        "only an interrupted or FAILED task can be resumed"
    )
    assert "it is PENDING" in detail["resume pending"]
    assert "is CANCELLED" in detail["start cancelled"]
    assert "is CANCELLED" in detail["cancel twice"]
    assert final == {done: "SUCCEEDED", pending: "CANCELLED"}


def test_cancel_stops_a_running_task(
    open_manager: ManagerFactory, live_server: ServerFactory
) -> None:
    """POST cancel on a RUNNING task answers CANCELLED, and it stays so when its held calls
    come back; a running task cannot be resumed (409)."""
    service = FakeLLMService(make_tree(["广东省"]), hold=lambda path: True)
    manager = open_manager(service)
    server = live_server(manager)
    with server.client() as client:
        task_id = create(client, target="广东省")
        assert client.post(f"/tasks/{task_id}/start").json()["status"] == "RUNNING"
        refused = client.post(f"/tasks/{task_id}/resume")
        cancelled = client.post(f"/tasks/{task_id}/cancel")
        service.release()
        events = server.follow(client, task_id)
        final = client.get(f"/tasks/{task_id}").json()
    assert refused.status_code == 409
    assert refused.json()["detail"].endswith("it is running in this process")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "CANCELLED"
    assert events[-1] == ("end", {"task_id": task_id, "status": "CANCELLED"})
    assert final["status"] == "CANCELLED"


def test_resume_carries_on_a_failed_task(
    open_manager: ManagerFactory, live_server: ServerFactory
) -> None:
    """A task whose node failed ends FAILED; POST resume answers RUNNING and it ends SUCCEEDED
    once the node answers."""
    tree = make_tree(["广东省"])
    broken = ("广东省", "广东第1市")
    service = FakeLLMService(tree, errors={broken: fail_first(1, lambda: LLMServerError("502"))})
    server = live_server(open_manager(service, max_retries=0, backoff_base=0.001))
    with server.client() as client:
        task_id = create(client, target="广东省")
        client.post(f"/tasks/{task_id}/start")
        server.follow(client, task_id)
        failed = client.get(f"/tasks/{task_id}").json()
        resumed = client.post(f"/tasks/{task_id}/resume")
        server.follow(client, task_id)
        final = client.get(f"/tasks/{task_id}").json()
    assert failed["status"] == "FAILED"
    assert failed["failed_paths"] == [list(broken)]
    assert resumed.status_code == 200
    assert resumed.json()["status"] == "RUNNING"
    assert (final["status"], final["progress"], final["failed_paths"]) == ("SUCCEEDED", 100, [])


def test_a_resume_the_manager_refuses_is_409(
    open_manager: ManagerFactory, live_server: ServerFactory
) -> None:
    """A FAILED task whose target is no province cannot be resumed: 409, the task unchanged."""
    server = live_server(open_manager(FakeLLMService({}, provinces=())))
    with server.client() as client:
        task_id = create(client, target="火星省")
        assert client.post(f"/tasks/{task_id}/start").status_code == 200
        assert client.get(f"/tasks/{task_id}").json()["status"] == "FAILED"
        response = client.post(f"/tasks/{task_id}/resume")
        assert client.get(f"/tasks/{task_id}").json()["status"] == "FAILED"
    assert response.status_code == 409
    assert response.json()["detail"] == (
        f"task {task_id} cannot be resumed: resume was refused; the service's log says why"
    )


# --- health and metrics --------------------------------------------------------------------------


def test_healthz_reports_actors_log_and_pool(live_server: ServerFactory) -> None:
    """GET /healthz is 200 ok with the actors running, the log writable and the pool idle."""
    server = live_server()
    with server.client() as client:
        response = client.get("/healthz")
    assert response.status_code == 200
    health = response.json()
    assert health["status"] == "ok"
    assert health["problems"] == []
    assert health["actors_running"]
    assert health["log_writable"]
    assert health["log_size_bytes"] > 0
    assert health["pool"] == {
        "workers": 5,
        "workers_idle": 5,
        "in_flight": 0,
        "queued": 0,
        "waiting_retry": 0,
    }


def test_a_stopped_actor_system_is_503(
    open_manager: ManagerFactory, live_server: ServerFactory
) -> None:
    """Once the manager is closed, /healthz is 503 naming the problems, and calls that need the
    actors are 503 too; reads of the last known state still answer."""
    manager = open_manager()
    server = live_server(manager)
    with server.client() as client:
        task_id = create(client)
        manager.close()
        health = client.get("/healthz")
        start = client.post(f"/tasks/{task_id}/start")
        created = client.post("/tasks", json={"task_type": "full"})
        status = client.get(f"/tasks/{task_id}")
    assert health.status_code == 503
    body = health.json()
    assert body["status"] == "unavailable"
    assert not body["actors_running"]
    assert "the actor system is not running" in body["problems"]
    assert start.status_code == created.status_code == 503
    assert start.json()["detail"] == "this TaskManager is closed"
    assert status.status_code == 200
    assert status.json()["status"] == "PENDING"


def metric_values(text: str) -> dict[str, float]:
    """``name{labels}`` -> value, from a Prometheus text page; checks every line's form."""
    values: dict[str, float] = {}
    sample = re.compile(r'^([a-z_]+(?:\{[a-z_]+="[^"]*"\})?) (-?[0-9.e+]+)$')
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        match = sample.match(line)
        assert match, f"not a sample line: {line!r}"
        values[match[1]] = float(match[2])
    return values


def test_metrics_in_prometheus_text_format(live_server: ServerFactory, log_path: Path) -> None:
    """GET /metrics has tasks by status, LLM calls, retries, calls in flight and the log's size,
    each with HELP and TYPE lines."""
    server = live_server()
    with server.client() as client:
        run(server, client)
        create(client)
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    values = metric_values(response.text)
    assert values['hospital_refresh_tasks{status="SUCCEEDED"}'] == 1
    assert values['hospital_refresh_tasks{status="PENDING"}'] == 1
    assert values['hospital_refresh_tasks{status="RUNNING"}'] == 0
    assert values["hospital_refresh_llm_calls_total"] == len(BEIJING)
    assert values["hospital_refresh_llm_retries_total"] == 0
    assert values["hospital_refresh_llm_calls_in_flight"] == 0
    assert values["hospital_refresh_llm_concurrency"] == 5
    assert values["hospital_refresh_log_size_bytes"] == os.path.getsize(log_path)
    assert values["hospital_refresh_log_events"] == len(iter_valid(str(log_path))[1])
    assert values["hospital_refresh_up"] == 1
    assert "# TYPE hospital_refresh_llm_calls_total counter" in response.text
    assert "# TYPE hospital_refresh_llm_calls_in_flight gauge" in response.text


def test_metrics_count_retries_and_running_tasks(
    open_manager: ManagerFactory, live_server: ServerFactory
) -> None:
    """A retried call shows in the retries counter; a RUNNING task has its progress gauge and
    its held calls are in flight."""
    tree = make_tree(["广东省"], cities=1, districts=1, hospitals=1)
    city = ("广东省", "广东第1市")
    service = FakeLLMService(
        tree,
        errors={city: fail_first(1, lambda: LLMServerError("502"))},
        hold=lambda path: len(path) == 3,
    )
    server = live_server(open_manager(service, backoff_base=0.001))
    with server.client() as client:
        task_id = create(client, target="广东省")
        client.post(f"/tasks/{task_id}/start")
        with client.stream("GET", f"/tasks/{task_id}/progress") as response:
            for _, status in server.iter_sse(response):
                if status["counts"]["districts"] == 1:
                    break  # the district's call is in flight, held
        values = metric_values(client.get("/metrics").text)
        service.release()
        server.follow(client, task_id)
    assert values["hospital_refresh_llm_retries_total"] == 1
    assert values['hospital_refresh_tasks{status="RUNNING"}'] == 1
    assert f'hospital_refresh_task_progress_percent{{task_id="{task_id}"}}' in values
    assert values["hospital_refresh_llm_calls_in_flight"] == 1


# --- /openapi.json, the dashboard's files --------------------------------------------------------


def test_openapi_describes_every_endpoint(live_server: ServerFactory) -> None:
    """/openapi.json lists every endpoint with its request model and its error responses."""
    server = live_server()
    with server.client() as client:
        spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    assert set(paths) == {
        "/tasks",
        "/tasks/{task_id}",
        "/tasks/{task_id}/start",
        "/tasks/{task_id}/cancel",
        "/tasks/{task_id}/resume",
        "/tasks/{task_id}/tree",
        "/tasks/{task_id}/events",
        "/tasks/{task_id}/progress",
        "/healthz",
        "/metrics",
    }
    create_op = paths["/tasks"]["post"]
    body = create_op["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("/CreateTaskRequest")
    assert {"201", "422", "413"} <= set(create_op["responses"])
    assert {"200", "404", "409"} <= set(paths["/tasks/{task_id}/start"]["post"]["responses"])
    assert (
        "text/event-stream"
        in paths["/tasks/{task_id}/progress"]["get"]["responses"]["200"]["content"]
    )
    assert {"TaskStatus", "TaskTree", "EventsPage", "Health", "ErrorBody"} <= set(
        spec["components"]["schemas"]
    )


def test_the_dashboard_is_served_offline(live_server: ServerFactory) -> None:
    """GET / is the dashboard page with a strict Content-Security-Policy; its script and style
    sheet are served by the app and nothing is loaded from elsewhere."""
    server = live_server()
    with server.client() as client:
        page = client.get("/")
        script = client.get("/static/dashboard.js")
        style = client.get("/static/dashboard.css")
    assert page.status_code == script.status_code == style.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert script.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert '<script src="static/dashboard.js"' in page.text
    for text in (page.text, script.text, style.text):
        assert "http://" not in text
        assert "https://" not in text


# --- the token and the body bound ----------------------------------------------------------------


GUARDED = [
    ("POST", "/tasks"),
    ("GET", "/tasks"),
    ("GET", "/tasks/{id}"),
    ("POST", "/tasks/{id}/start"),
    ("POST", "/tasks/{id}/cancel"),
    ("POST", "/tasks/{id}/resume"),
    ("GET", "/tasks/{id}/tree"),
    ("GET", "/tasks/{id}/events"),
    ("GET", "/tasks/{id}/progress"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
]


def test_a_token_guards_every_endpoint_but_healthz(
    live_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With $HOSPITAL_REFRESH_TOKEN set, each endpoint but /healthz (and the dashboard's own
    files, which hold no data) is a 401 without the bearer token or with a wrong one, and
    answers with it."""
    monkeypatch.setenv("HOSPITAL_REFRESH_TOKEN", "s3cret-token")
    server = live_server()
    with server.client("s3cret-token") as good, server.client() as anonymous:
        task_id = create(good, "full", None)
        for method, path in GUARDED:
            url = path.format(id=task_id)
            json = {"task_type": "full"} if path == "/tasks" and method == "POST" else None
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": "s3cret-token"},
            ):
                refused = anonymous.request(method, url, json=json, headers=headers)
                assert refused.status_code == 401, (method, url, headers)
                assert refused.headers["www-authenticate"] == "Bearer"
                assert refused.json()["detail"].startswith("missing or wrong bearer token")
            if path.endswith("/progress"):
                good.post(f"/tasks/{task_id}/cancel")  # so that its stream ends
            answered = good.request(method, url, json=json)
            assert answered.status_code in (200, 201, 409), (method, url, answered.text)
        assert anonymous.get("/healthz").status_code == 200
        assert anonymous.get("/").status_code == 200
        assert anonymous.get("/static/dashboard.js").status_code == 200
        assert (
            good.get("/tasks", headers={"Authorization": "bearer s3cret-token"}).status_code == 200
        )


def test_without_a_token_no_header_is_needed(live_server: ServerFactory) -> None:
    """With no token configured, the API answers requests that carry no Authorization."""
    server = live_server()
    with server.client() as client:
        assert client.get("/tasks").status_code == 200
        assert client.get("/metrics").status_code == 200
        assert client.get("/openapi.json").status_code == 200


def test_request_bodies_are_size_bounded(live_server: ServerFactory) -> None:
    """A body over 64 KiB is a 413, whether its Content-Length says so or it comes chunked;
    no task is created."""
    server = live_server()
    padding = "x" * (64 * 1024)

    def chunks() -> Iterator[bytes]:
        yield b'{"task_type": "full", "pad": "'
        for _ in range(20):
            yield b"y" * 4096
        yield b'"}'

    with server.client() as client:
        sized = client.post("/tasks", json={"task_type": "full", "target": padding})
        chunked = client.post(
            "/tasks", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert client.get("/tasks").json() == []
    assert sized.status_code == chunked.status_code == 413
    assert sized.json() == chunked.json() == {"detail": "request body over 65536 bytes"}


# --- lifespan, restart, mounting -----------------------------------------------------------------


def test_a_restart_on_the_same_log_shows_the_same_tasks(live_server: ServerFactory) -> None:
    """An app that owns its manager closes it at shutdown (the log's lock is free again); a new
    app on the same log shows the same tasks, trees and audit trail."""
    first = live_server(app_owns=True)
    with first.client() as client:
        done = run(first, client)["task_id"]
        cancelled = create(client, "full", None)
        client.post(f"/tasks/{cancelled}/cancel")
        create(client)
        before = client.get("/tasks").json()
        tree = client.get(f"/tasks/{done}/tree").json()
        trail = client.get(f"/tasks/{done}/events", params={"limit": 1000}).json()
    first.stop()
    second = live_server(app_owns=True)
    with second.client() as client:
        assert client.get("/tasks").json() == before
        assert client.get(f"/tasks/{done}/tree").json() == tree
        assert client.get(f"/tasks/{done}/events", params={"limit": 1000}).json() == trail
    assert [s["status"] for s in before] == ["SUCCEEDED", "CANCELLED", "PENDING"]


def test_a_manager_passed_in_stays_open_unless_the_app_is_told_to_close_it(
    open_manager: ManagerFactory, live_server: ServerFactory
) -> None:
    """The app leaves a manager it was given running after shutdown; with close_manager=True it
    closes it."""
    kept = open_manager()
    server = live_server(kept)
    server.stop()
    assert kept.system.running
    kept.close()
    closed = open_manager()
    server = live_server(closed, close_manager=True)
    server.stop()
    assert not closed.system.running


def test_the_app_mounts_inside_another_app(open_manager: ManagerFactory) -> None:
    """Mounted under /refresh in a user's FastAPI app whose lifespan runs the app's, the API,
    the health check and the dashboard (with its relative links) answer under the prefix, and
    the token guards the same paths as at the root."""
    from fastapi import FastAPI

    from tasks import create_app

    refresh = create_app(open_manager(), close_manager=True, token="mounted")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with refresh.router.lifespan_context(refresh):
            yield

    outer = FastAPI(lifespan=lifespan)

    @outer.get("/")
    async def home() -> dict[str, str]:
        return {"app": "the user's own"}

    outer.mount("/refresh", refresh)
    server = LiveServer(outer, None)
    try:
        with server.client("mounted") as client, server.client() as anonymous:
            assert anonymous.get("/").json() == {"app": "the user's own"}
            assert anonymous.get("/refresh/tasks").status_code == 401
            body = {"task_type": "province", "target": "北京市"}
            assert anonymous.post("/refresh/tasks", json=body).status_code == 401
            created = client.post("/refresh/tasks", json=body)
            task_id = created.json()["task_id"]
            assert created.headers["location"] == f"{server.url}/refresh/tasks/{task_id}"
            assert client.post(f"/refresh/tasks/{task_id}/start").status_code == 200
            with client.stream("GET", f"/refresh/tasks/{task_id}/progress") as response:
                events = list(server.iter_sse(response))
            assert events[-1] == ("end", {"task_id": task_id, "status": "SUCCEEDED"})
            assert anonymous.get("/refresh/healthz").json()["status"] == "ok"
            page = anonymous.get("/refresh/", follow_redirects=True)
            assert page.status_code == 200
            assert 'src="static/dashboard.js"' in page.text
            assert anonymous.get("/refresh/static/dashboard.js").status_code == 200
    finally:
        server.stop()
    assert not refresh.state.service.manager.system.running  # closed by the lifespan


def test_a_mounted_app_whose_lifespan_never_ran_says_so(log_path: Path) -> None:
    """Mounted without running its lifespan, the app has no actor system: /healthz and the API
    are 503s saying the lifespan did not run (rather than failing obscurely)."""
    from fastapi import FastAPI

    from tasks import Settings, create_app

    outer = FastAPI()
    outer.mount("/refresh", create_app(settings=Settings(log_path=str(log_path))))
    server = LiveServer(outer, None)
    try:
        with server.client() as client:
            health = client.get("/refresh/healthz")
            listing = client.get("/refresh/tasks")
    finally:
        server.stop()
    assert health.status_code == listing.status_code == 503
    assert health.json()["problems"] == ["the service has not started (its lifespan did not run)"]
    assert "the app's lifespan did not run" in listing.json()["detail"]
    assert not log_path.exists()  # no actor system, no log


def test_the_audit_trail_outlives_cleanup(live_server: ServerFactory) -> None:
    """A task dropped from the projections by cleanup_old_tasks is a 404 for its status, but
    its audit trail, the cleanup included, is still read from the log."""
    server = live_server()
    with server.client() as client:
        task_id = run(server, client)["task_id"]
        trail = client.get(f"/tasks/{task_id}/events", params={"limit": 1000}).json()
        assert asyncio.run(server.manager.cleanup_old_tasks(0)) == 1
        gone = client.get(f"/tasks/{task_id}")
        after = client.get(f"/tasks/{task_id}/events", params={"limit": 1000}).json()
    assert gone.status_code == 404
    assert [e["type"] for e in trail["events"]][-1] == "TaskSucceeded"
    assert after["events"][:-1] == trail["events"]
    cleaned = after["events"][-1]  # the cleanup itself is part of the task's trail
    assert cleaned["type"] == "TasksCleanedUp"
    assert cleaned["task_ids"] == [task_id]


def test_the_serve_command_serves_until_ctrl_c(log_path: Path) -> None:
    """`hospital-refresh serve --log PATH --port N` answers on 127.0.0.1; Ctrl-C shuts it down
    cleanly (exit 0) with the task it was given journaled in the log."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    exe = os.path.join(os.path.dirname(sys.executable), "hospital-refresh")
    args = [exe, "serve", "--log", str(log_path), "--port", str(port), "--sim-latency", "0-2"]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    health = client.get("/healthz")
                    break
                except httpx.TransportError:
                    assert proc.poll() is None, proc.communicate()[1]
                    assert time.monotonic() < deadline, "the server did not come up"
                    time.sleep(0.05)
            task_id = create(client)
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    assert health.json()["status"] == "ok"
    assert proc.returncode == 0, stderr
    assert f"serving {log_path} on http://127.0.0.1:{port}/" in stderr
    _, records, _ = iter_valid(str(log_path))
    assert [r.event.task_id for r in records] == [task_id]
