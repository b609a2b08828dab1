"""The HTTP service: a FastAPI app over one TaskManager, with live progress and a dashboard.

Serve it::

    hospital-refresh serve --log events.hrlog            # http://127.0.0.1:8000/

or build it yourself::

    from tasks import create_app
    app = create_app()                    # a TaskManager from the settings, owned by the app

Endpoints (``/openapi.json`` describes each one)::

    POST /tasks                    {"task_type": "province", "target": "北京市"} -> 201 {"task_id"}
    POST /tasks/{id}/start         -> the status dict; 409 unless PENDING
    POST /tasks/{id}/cancel        -> the status dict; 409 unless PENDING or RUNNING
    POST /tasks/{id}/resume        -> the status dict; 409 unless interrupted or FAILED
    GET  /tasks?status=RUNNING     the status dicts, oldest first
    GET  /tasks/{id}               the status dict
    GET  /tasks/{id}/tree          the fetched hierarchy, its frontier and its failed nodes
    GET  /tasks/{id}/events        the audit trail from the log, ?after_seq=&limit= pages
    GET  /tasks/{id}/progress      Server-Sent Events, one per change, until the task ends
    GET  /healthz                  actors alive, log writable, pool answering; 503 when not
    GET  /metrics                  Prometheus text format
    GET  /                         the dashboard

Errors are JSON ``{"detail": ...}``: 404 unknown task, 409 wrong state, 422 bad input (the
manager's message), 401 missing or wrong token, 413 body over 64 KiB, 503 actor system down.

Security: ``serve`` binds 127.0.0.1 unless told otherwise. When ``$HOSPITAL_REFRESH_TOKEN`` is set
(or ``token=`` is given), every endpoint but ``/healthz`` needs ``Authorization: Bearer <token>``,
compared in constant time. The dashboard's page, script and style sheet hold no data and are
served without it (a browser cannot send a header when it opens a page); the page asks for the
token, keeps it in ``sessionStorage`` and sends it with each call.

Lifecycle: the app's lifespan owns the actor system. Without a ``manager`` it makes one from the
settings at start-up and closes it at shutdown (the journal is flushed, every actor stopped).
A ``manager`` you pass in stays yours: the app does not close it unless ``close_manager=True``.
A mounted app's lifespan is not run by Starlette: run it from the parent's (see the README).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib.metadata
import json
import os
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from enum import Enum
from typing import Annotated, Any, Literal, TypeVar

import uvicorn
from fastapi import FastAPI, HTTPException, Path, Query, Request, Response, Security
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from actors import bridge
from events import FINISHED, STATUSES
from store import EventLog, LogCorruptedError

from ._config import Settings
from ._manager import TaskManager
from ._metrics import CONTENT_TYPE, render_metrics

T = TypeVar("T")
Status = dict[str, Any]

TOKEN_ENV = "HOSPITAL_REFRESH_TOKEN"
MAX_BODY_BYTES = 64 * 1024
HEARTBEAT_S = 15.0
"""An SSE comment line this often keeps proxies from closing a quiet stream."""
HEALTH_TIMEOUT_S = 2.0
EVENTS_PAGE_MAX = 1000
_STATIC = os.path.join(os.path.dirname(__file__), "static")
_OPEN_PATHS = ("/healthz", "/", "/static/")
"""Served without a token: the health check, and the dashboard's page and assets (no data)."""


# --- request and response models (they make /openapi.json) --------------------------------------


class CreateTaskRequest(BaseModel):
    """What to refresh."""

    model_config = ConfigDict(extra="forbid")
    task_type: str = Field(
        description="'full' (the whole country) or 'province'", examples=["province"]
    )
    target: str | None = Field(
        None,
        max_length=64,
        description="the province of a 'province' task, e.g. '北京市'; none for 'full'",
        examples=["北京市"],
    )


class TaskCreatedResponse(BaseModel):
    """The id of the task just created (PENDING: start it with POST /tasks/{id}/start)."""

    task_id: str


class Counts(BaseModel):
    """How many names of each level the task has fetched."""

    provinces: int
    cities: int
    districts: int
    hospitals: int


class TaskStatus(BaseModel):
    """A task's status dict, as ``TaskManager.get_task_status`` returns it."""

    model_config = ConfigDict(extra="allow")
    task_id: str
    task_type: str
    target: str | None
    status: Literal["PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"]
    progress: int = Field(ge=0, le=100)
    current_step: str
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    error: str | None
    counts: Counts
    retries: int
    interrupted: bool = Field(
        description="RUNNING in the log but its process died: POST /tasks/{id}/resume"
    )
    failed_paths: list[list[str]]
    pending_nodes: int


class TaskTree(BaseModel):
    """The fetched hierarchy: ``children`` nests names; a name with nothing fetched is null."""

    model_config = ConfigDict(extra="allow")
    task_id: str
    root: list[str]
    children: dict[str, Any]
    frontier: list[list[str]] = Field(description="nodes still to fetch")
    failed: dict[str, str] = Field(description="'a / b / c' path -> error, after retries")


class AuditEvent(BaseModel):
    """One line of the audit trail: sequence number, frame offset, type, time, then fields."""

    model_config = ConfigDict(extra="allow")
    seq: int
    offset: int
    type: str
    at: str | None


class EventsPage(BaseModel):
    """A page of a task's audit trail, oldest first; ask again with ``after_seq=next_after_seq``
    while ``more`` is true."""

    task_id: str
    events: list[AuditEvent]
    next_after_seq: int
    more: bool


class PoolState(BaseModel):
    """The fetch pool as the health check sees it."""

    workers: int
    workers_idle: int
    in_flight: int
    queued: int
    waiting_retry: int


class Health(BaseModel):
    """``ok`` when the actors are alive, the log writable and the pool answering."""

    status: Literal["ok", "unavailable"]
    actors_running: bool
    log_writable: bool
    log_size_bytes: int | None
    pool: PoolState | None
    problems: list[str]


class ErrorBody(BaseModel):
    """Every error the API itself raises."""

    detail: str


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        401: "missing or wrong bearer token",
        404: "no such task",
        409: "the task is not in a state that allows this",
        413: "request body too large",
        422: "bad input: the message says what is allowed",
        503: "the actor system is not running",
    }
    return {code: {"model": ErrorBody, "description": text[code]} for code in codes}


# --- the service state shared by the routes ----------------------------------------------------


class _Latest:
    """The newest status of one task, handed from the journal's thread to the event loop.

    Changes that come faster than the client reads are merged (the newest wins, order is kept),
    so a slow client never makes a queue grow, and the final status always gets through.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._value: Status | None = None
        self._scheduled = False
        self.event = asyncio.Event()

    def offer(self, status: Status) -> None:
        """Called on the journal's thread."""
        with self._lock:
            self._value = status
            if self._scheduled:
                return
            self._scheduled = True
        if not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed since the check
                self._loop.call_soon_threadsafe(self.event.set)

    def take(self) -> Status | None:
        """Called on the loop after ``event`` fired: the newest status, if any."""
        self.event.clear()
        with self._lock:
            value, self._value = self._value, None
            self._scheduled = False
        return value


class _Service:
    """What the routes share: the manager, the open progress streams, a page-offset cache."""

    def __init__(
        self, manager: TaskManager | None, settings: Settings | None, owns: bool | None
    ) -> None:
        self.manager = manager
        self.settings = settings
        self.owns = owns if owns is not None else manager is None
        self._makes = manager is None  # a new manager at each start-up: a restart works
        self.closing = False
        self.streams: set[_Latest] = set()
        self.offsets: OrderedDict[int, int] = OrderedDict()
        """seq -> byte offset of that event's frame: where the page after it starts reading."""

    async def open(self) -> None:
        self.closing = False
        if self.manager is None:
            settings = self.settings
            self.manager = await asyncio.to_thread(lambda: TaskManager(settings=settings))

    async def close(self) -> None:
        self.end_streams()
        manager = self.manager
        if manager is not None and self.owns:
            await manager.aclose()
        if self._makes:
            self.manager = None

    def end_streams(self) -> None:
        """Make every open progress stream end now (the server is shutting down)."""
        self.closing = True
        for latest in list(self.streams):
            latest.event.set()

    def get(self) -> TaskManager:
        manager = self.manager
        if manager is None:
            raise HTTPException(
                503,
                "the service has not started: the app's lifespan did not run "
                "(a mounted app needs the parent's lifespan to run it; see create_app)",
            )
        return manager

    def remember_offset(self, seq: int, offset: int) -> None:
        self.offsets[seq] = offset
        self.offsets.move_to_end(seq)
        while len(self.offsets) > 4096:
            self.offsets.popitem(last=False)


# --- middleware: bearer token, body size --------------------------------------------------------


def _route_path(scope: Scope) -> str:
    """The path inside this app, also when it is mounted under a prefix."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


async def _send_json(send: Send, status: int, body: Mapping[str, Any], **headers: str) -> None:
    data = json.dumps(body, ensure_ascii=False).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


class BearerTokenMiddleware:
    """Refuse (401) every request without ``Authorization: Bearer <token>``, but the open paths.

    The token is compared with :func:`hmac.compare_digest` (constant time).
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    def _allowed(self, scope: Scope) -> bool:
        path = _route_path(scope)
        if path in _OPEN_PATHS or path.startswith("/static/"):
            return True
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(
                    credentials.strip(), self.token
                )
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        await _send_json(
            send,
            401,
            {"detail": "missing or wrong bearer token: send 'Authorization: Bearer <token>'"},
            www_authenticate="Bearer",
        )


class BodyLimitMiddleware:
    """Refuse (413) a request body over ``max_bytes``: at once by its Content-Length, or as soon
    as a chunked body goes past it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        detail = {"detail": f"request body over {self.max_bytes} bytes"}
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_bytes):
                await _send_json(send, 413, detail)
                return
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, detail["detail"])
            return message

        await self.app(scope, bounded, send)


# --- the app --------------------------------------------------------------------------------------


def create_app(
    manager: TaskManager | None = None,
    *,
    settings: Settings | None = None,
    close_manager: bool | None = None,
    token: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The HTTP API and the dashboard over ``manager``, as a FastAPI app.

    Without ``manager``, the app's lifespan makes a ``TaskManager(settings=settings)`` at start-up
    (``settings`` None: read as the command line reads them) and closes it at shutdown: the
    journal is flushed and every actor stopped. A ``manager`` passed in is left open at shutdown
    unless ``close_manager=True``: whoever made it closes it. ``token`` defaults to
    ``$HOSPITAL_REFRESH_TOKEN``; empty or unset, no token is asked for.

    Mounted in another app (Starlette does not run a mounted app's lifespan)::

        refresh = create_app()

        @contextlib.asynccontextmanager
        async def lifespan(app):
            async with refresh.router.lifespan_context(refresh):
                yield

        app = FastAPI(lifespan=lifespan)
        app.mount("/refresh", refresh)          # dashboard at /refresh/
    """
    service = _Service(manager, settings, close_manager)
    token = os.environ.get(TOKEN_ENV) if token is None else token

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.open()
        try:
            yield
        finally:
            await service.close()

    app = FastAPI(
        title="hospital-refresh",
        version=_version(),
        description=(
            "Refresh a directory of Chinese hospitals by region with an LLM. Every change is "
            "journaled in an event log; status, trees and the audit trail are rebuilt from it."
        ),
        lifespan=lifespan,
        docs_url=None,  # the interactive pages load their assets from a CDN: not offline
        redoc_url=None,
    )
    app.state.service = service
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    if token:
        app.add_middleware(BearerTokenMiddleware, token=token)

    @app.exception_handler(LogCorruptedError)
    async def _corrupt(_: Request, exc: LogCorruptedError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=500)

    _add_task_routes(app, service, bool(token))
    _add_service_routes(app, service)
    app.mount("/static", StaticFiles(directory=_STATIC), name="static")
    return app


def _version() -> str:
    try:
        return importlib.metadata.version("hospital-refresh")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout
        return "0"


_bearer = HTTPBearer(
    auto_error=False,
    description=f"Needed on every endpoint but /healthz when ${TOKEN_ENV} is set",
)


def _documents_auth(
    _: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
) -> None:
    """Puts the bearer scheme in /openapi.json; the check itself is the middleware's."""


TaskId = Annotated[str, Path(min_length=1, max_length=64, description="a task id")]


async def _call(awaitable: Awaitable[T]) -> T:
    """Await a manager call; a stopped actor system is a 503, bad input a 422."""
    try:
        return await awaitable
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    except RuntimeError as exc:
        raise HTTPException(503, str(exc)) from None


def _status_or_404(manager: TaskManager, task_id: str) -> Status:
    # The published dict itself, not a deep copy: it is never mutated once published, and
    # here it is only serialised (a copy cost more than the rest of the request).
    status = manager.system.view.peek(task_id)
    if status is None:
        raise HTTPException(404, f"no task {task_id!r}")
    return status


async def _transition(
    manager: TaskManager,
    task_id: str,
    act: Callable[[str], Awaitable[bool]],
    refusal: Callable[[Status], str],
) -> Status:
    """Ask the manager to move a task on; 404 if unknown, 409 with ``refusal`` if it declines."""
    _status_or_404(manager, task_id)
    if not await _call(act(task_id)):
        status = _status_or_404(manager, task_id)
        raise HTTPException(409, f"task {task_id} {refusal(status)}")
    return _status_or_404(manager, task_id)


def _start_refusal(status: Status) -> str:
    return f"is {status['status']}; only a PENDING task can be started"


def _cancel_refusal(status: Status) -> str:
    return f"is {status['status']}; only a PENDING or RUNNING task can be cancelled"


def _resume_refusal(status: Status) -> str:
    return f"cannot be resumed: {_resume_reason(status)}"


def _resume_reason(status: Status) -> str:
    state = status["status"]
    if state == "RUNNING" and not status["interrupted"]:
        return "it is running in this process"
    if state not in ("RUNNING", "FAILED"):
        return f"it is {state}; only an interrupted or FAILED task can be resumed"
    return "resume was refused; the service's log says why"


def _add_task_routes(app: FastAPI, service: _Service, secured: bool) -> None:
    auth = [Security(_documents_auth)] if secured else []
    tags: list[str | Enum] = ["tasks"]

    @app.post(
        "/tasks",
        status_code=201,
        response_model=TaskCreatedResponse,
        responses=_errors(401, 413, 422, 503),
        dependencies=auth,
        tags=tags,
        summary="Create a refresh task (PENDING)",
    )
    async def create_task(
        body: CreateTaskRequest, request: Request, response: Response
    ) -> TaskCreatedResponse:
        manager = service.get()
        task_id = await _call(manager.create_refresh_task(body.task_type, body.target))
        response.headers["Location"] = str(request.url_for("get_task", task_id=task_id))
        return TaskCreatedResponse(task_id=task_id)

    @app.get(
        "/tasks",
        response_model=list[TaskStatus],
        responses=_errors(401, 422),
        dependencies=auth,
        tags=tags,
        summary="List the tasks, oldest first",
    )
    async def list_tasks(
        status: Annotated[
            str | None, Query(description=f"only tasks in this status: {', '.join(STATUSES)}")
        ] = None,
    ) -> Any:
        manager = service.get()
        try:
            return manager.list_tasks(status)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None

    @app.get(
        "/tasks/{task_id}",
        response_model=TaskStatus,
        responses=_errors(401, 404),
        dependencies=auth,
        tags=tags,
        summary="A task's status",
    )
    async def get_task(task_id: TaskId) -> Any:
        return _status_or_404(service.get(), task_id)

    @app.post(
        "/tasks/{task_id}/start",
        response_model=TaskStatus,
        responses=_errors(401, 404, 409, 503),
        dependencies=auth,
        tags=tags,
        summary="Start a PENDING task",
    )
    async def start_task(task_id: TaskId) -> Any:
        manager = service.get()
        return await _transition(manager, task_id, manager.start_task, _start_refusal)

    @app.post(
        "/tasks/{task_id}/cancel",
        response_model=TaskStatus,
        responses=_errors(401, 404, 409, 503),
        dependencies=auth,
        tags=tags,
        summary="Cancel a PENDING or RUNNING task",
    )
    async def cancel_task(task_id: TaskId) -> Any:
        manager = service.get()
        return await _transition(manager, task_id, manager.cancel_task, _cancel_refusal)

    @app.post(
        "/tasks/{task_id}/resume",
        response_model=TaskStatus,
        responses=_errors(401, 404, 409, 503),
        dependencies=auth,
        tags=tags,
        summary="Carry on an interrupted or FAILED task from its frontier",
    )
    async def resume_task(task_id: TaskId) -> Any:
        manager = service.get()
        return await _transition(manager, task_id, manager.resume_task, _resume_refusal)

    @app.get(
        "/tasks/{task_id}/tree",
        response_model=TaskTree,
        responses=_errors(401, 404, 503),
        dependencies=auth,
        tags=tags,
        summary="The hierarchy a task has fetched so far",
    )
    async def get_tree(task_id: TaskId) -> Any:
        tree = await _call(service.get().get_task_tree(task_id))
        if tree is None:
            raise HTTPException(404, f"no task {task_id!r}")
        return JSONResponse(tree)  # skips re-validating a tree of thousands of names

    @app.get(
        "/tasks/{task_id}/events",
        response_model=EventsPage,
        responses=_errors(401, 404),
        dependencies=auth,
        tags=tags,
        summary="A task's audit trail, read from the event log",
    )
    async def get_events(
        task_id: TaskId,
        after_seq: Annotated[int, Query(ge=0, description="only events after this seq")] = 0,
        limit: Annotated[int, Query(ge=1, le=EVENTS_PAGE_MAX)] = 100,
    ) -> Any:
        manager = service.get()
        start = service.offsets.get(after_seq) if after_seq else None
        events, more = await asyncio.to_thread(
            _read_trail, manager.log_path, task_id, after_seq, limit, start
        )
        if not events and manager.get_task_status(task_id) is None:
            raise HTTPException(404, f"no task {task_id!r} in the log")
        if events:
            service.remember_offset(events[-1]["seq"], events[-1]["offset"])
        next_after = events[-1]["seq"] if events else after_seq
        return {"task_id": task_id, "events": events, "next_after_seq": next_after, "more": more}

    @app.get(
        "/tasks/{task_id}/progress",
        responses={
            200: {
                "content": {"text/event-stream": {}},
                "description": (
                    "Server-Sent Events: 'status' events carrying the status dict, one per "
                    "change of progress, step or status (changes faster than the client reads "
                    "are merged, newest wins), then one 'end' event when the task has finished"
                ),
            },
            **_errors(401, 404),
        },
        response_class=StreamingResponse,
        dependencies=auth,
        tags=tags,
        summary="Live progress until the task ends",
    )
    async def progress(task_id: TaskId) -> StreamingResponse:
        manager = service.get()
        _status_or_404(manager, task_id)
        return StreamingResponse(
            _progress_stream(service, manager, task_id),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


def _read_trail(
    path: str, task_id: str, after_seq: int, limit: int, start: int | None
) -> tuple[list[dict[str, Any]], bool]:
    """Up to ``limit`` events of ``task_id`` after ``after_seq``, read-only (run in a thread)."""
    found: list[dict[str, Any]] = []
    more = False
    with EventLog(path, readonly=True) as log:
        records = log.read(start) if start is not None else log.read()
        try:
            for rec in records:
                if rec.seq <= after_seq:
                    continue
                event = rec.event
                if event.task_id != task_id and task_id not in getattr(event, "task_ids", ()):
                    continue
                if len(found) == limit:
                    more = True
                    break
                found.append(rec.to_dict())
        finally:
            records.close()
    return found, more


def _sse(event: str, data: Mapping[str, Any], event_id: int) -> str:
    return f"event: {event}\nid: {event_id}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _progress_stream(
    service: _Service, manager: TaskManager, task_id: str
) -> AsyncIterator[str]:
    latest = _Latest(asyncio.get_running_loop())

    def listener(status: Status) -> None:
        if status["task_id"] == task_id:
            latest.offer(status)

    unsubscribe = manager.system.view.subscribe(listener)  # before the first read: miss nothing
    service.streams.add(latest)
    sent = 0
    try:
        status = manager.get_task_status(task_id)
        if status is None:
            return
        sent += 1
        yield _sse("status", status, sent)
        last = (status["status"], status["progress"], status["current_step"])
        while status["status"] not in FINISHED and not service.closing:
            try:
                await asyncio.wait_for(latest.event.wait(), HEARTBEAT_S)
            except TimeoutError:
                if not manager.system.running:
                    return
                yield ": keep-alive\n\n"
                continue
            newest = latest.take()
            if newest is None:
                continue
            key = (newest["status"], newest["progress"], newest["current_step"])
            if key == last:
                continue
            status, last = newest, key
            sent += 1
            yield _sse("status", status, sent)
        if status["status"] in FINISHED:
            sent += 1
            yield _sse("end", {"task_id": task_id, "status": status["status"]}, sent)
    finally:
        unsubscribe()
        service.streams.discard(latest)


def _add_service_routes(app: FastAPI, service: _Service) -> None:
    @app.get(
        "/healthz",
        response_model=Health,
        responses={503: {"model": Health, "description": "something is wrong: see problems"}},
        tags=["service"],
        summary="Actors alive, log writable, pool answering (no token needed)",
    )
    async def healthz() -> JSONResponse:
        health = await _health(service)
        return JSONResponse(health, status_code=200 if health["status"] == "ok" else 503)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE.split(";")[0]: {}}}, **_errors(401)},
        tags=["service"],
        summary="Prometheus metrics",
    )
    async def metrics() -> Response:
        manager = service.get()
        system = manager.system
        statuses = manager.list_tasks()
        by_status: dict[str, int] = {}
        for s in statuses:
            by_status[s["status"]] = by_status.get(s["status"], 0) + 1
        try:
            pool = await asyncio.wait_for(bridge(system.pool_stats()), HEALTH_TIMEOUT_S)
        except (TimeoutError, RuntimeError):
            pool = None
        log = system.store.log
        text = render_metrics(
            by_status,
            pool,
            log_size=log.size,
            log_events=log.next_seq - 1,
            up=system.running,
            concurrency=system.config.concurrency,
            running_progress={
                s["task_id"]: s["progress"] for s in statuses if s["status"] == "RUNNING"
            },
        )
        return Response(text, media_type=CONTENT_TYPE)

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(
            os.path.join(_STATIC, "index.html"),
            headers={
                "Cache-Control": "no-cache",
                "Content-Security-Policy": (
                    "default-src 'self'; script-src 'self'; style-src 'self'; "
                    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'"
                ),
                "X-Content-Type-Options": "nosniff",
            },
        )


async def _health(service: _Service) -> dict[str, Any]:
    manager = service.manager
    if manager is None:
        return {
            "status": "unavailable",
            "actors_running": False,
            "log_writable": False,
            "log_size_bytes": None,
            "pool": None,
            "problems": ["the service has not started (its lifespan did not run)"],
        }
    system = manager.system
    problems: list[str] = []
    running = system.running
    if not running:
        problems.append("the actor system is not running")
    log = system.store.log
    writable = (
        running
        and not log.readonly
        and log.fileno is not None
        and os.access(log.path, os.W_OK)
        and os.path.exists(log.path)
    )
    if not writable:
        problems.append(f"the event log is not writable: {log.path}")
    pool: dict[str, Any] | None = None
    try:
        stats = await asyncio.wait_for(bridge(system.pool_stats()), HEALTH_TIMEOUT_S)
        pool = {
            "workers": system.config.concurrency,
            "workers_idle": stats["workers_idle"],
            "in_flight": stats["in_flight"],
            "queued": stats["queued"],
            "waiting_retry": stats["waiting_retry"],
        }
    except TimeoutError:
        problems.append(f"the fetch pool did not answer within {HEALTH_TIMEOUT_S:g} s")
    except RuntimeError as exc:
        problems.append(f"the fetch pool did not answer: {exc}")
    return {
        "status": "unavailable" if problems else "ok",
        "actors_running": running,
        "log_writable": writable,
        "log_size_bytes": log.size,
        "pool": pool,
        "problems": problems,
    }


# --- running it -------------------------------------------------------------------------------


class Server(uvicorn.Server):
    """``uvicorn.Server`` that ends the open progress streams first when it shuts down, so that
    a graceful shutdown does not wait on streams of tasks that run for minutes.

    ``app`` is an app made by :func:`create_app`, or any ASGI app that mounts some (their
    streams are then ended by ``timeout_graceful_shutdown``).
    """

    def __init__(self, config: uvicorn.Config, app: Any) -> None:
        super().__init__(config)
        state = getattr(app, "state", None)
        self._service: _Service | None = getattr(state, "service", None)

    async def shutdown(self, sockets: Any = None) -> None:
        if self._service is not None:
            self._service.end_streams()
        await super().shutdown(sockets)


def make_server(app: Any, host: str = "127.0.0.1", port: int = 8000, **config: Any) -> Server:
    """A :class:`Server` for ``app`` (uvicorn, HTTP/1.1 with h11, lifespan on, no websockets,
    uvicorn's own logging setup left out so the project's stays in place)."""
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "lifespan": "on",
        "ws": "none",
        "http": "h11",
        "log_config": None,
        "timeout_graceful_shutdown": 5,
    }
    options.update(config)
    return Server(uvicorn.Config(app, **options), app)


def serve(app: Any, host: str = "127.0.0.1", port: int = 8000, **config: Any) -> bool:
    """Run ``app`` with uvicorn until Ctrl-C or SIGTERM; False if it could not start."""
    server = make_server(app, host, port, **config)
    server.run()
    return server.started
