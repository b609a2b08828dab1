"""Shared fixtures: a log path in a fresh temporary directory, and hand-written event lists."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pykka
import pytest

from events import (
    LEVELS,
    ChildrenFetched,
    Event,
    FetchRetried,
    NodeFailed,
    ProgressChanged,
    TaskCancelled,
    TaskCreated,
    TaskFailed,
    TasksCleanedUp,
    TaskStarted,
    TaskSucceeded,
)

if TYPE_CHECKING:  # imported lazily below: the events and store tests need no actor system
    from llm import LLMService
    from tasks import TaskManager

T0 = 1_750_000_000.0
"""The first timestamp handed out by :class:`EventFactory` (2025-06-15T15:06:40Z)."""

GUANGDONG_TREE: dict[tuple[str, ...], tuple[str, ...]] = {
    ("广东省",): ("广州市", "深圳市"),
    ("广东省", "广州市"): ("天河区", "越秀区"),
    ("广东省", "深圳市"): ("南山区",),
    ("广东省", "广州市", "天河区"): ("中山大学附属第三医院", "暨南大学附属第一医院"),
    ("广东省", "广州市", "越秀区"): ("中山大学附属第一医院",),
    ("广东省", "深圳市", "南山区"): ("深圳市南山区人民医院",),
}
"""A small province task's tree, parents before children: 2 cities, 3 districts, 4 hospitals."""


class EventFactory:
    """Builds events with a deterministic clock: T0, T0 + 1, T0 + 2, ...

    Calling the factory gives a whole task, from ``TaskCreated`` to its outcome.
    """

    def __init__(self) -> None:
        self.clock = T0

    def tick(self) -> float:
        """The next timestamp."""
        at = self.clock
        self.clock += 1.0
        return at

    def created(
        self, task_id: str, task_type: str = "province", target: str | None = "广东省"
    ) -> TaskCreated:
        return TaskCreated(task_id=task_id, task_type=task_type, target=target, at=self.tick())

    def started(self, task_id: str) -> TaskStarted:
        return TaskStarted(task_id=task_id, at=self.tick())

    def fetched(
        self, task_id: str, path: tuple[str, ...], children: tuple[str, ...]
    ) -> ChildrenFetched:
        """The list of ``path``'s children; the level is the children's (``()`` -> provinces)."""
        return ChildrenFetched(
            task_id=task_id, level=LEVELS[len(path)], path=path, children=children, at=self.tick()
        )

    def retried(self, task_id: str, path: tuple[str, ...], attempt: int = 1) -> FetchRetried:
        return FetchRetried(
            task_id=task_id,
            path=path,
            attempt=attempt,
            error="timeout",
            delay_s=0.5,
            at=self.tick(),
        )

    def node_failed(self, task_id: str, path: tuple[str, ...], error: str = "boom") -> NodeFailed:
        return NodeFailed(task_id=task_id, path=path, error=error, at=self.tick())

    def progress(self, task_id: str, progress: int, step: str = "step") -> ProgressChanged:
        return ProgressChanged(
            task_id=task_id, progress=progress, current_step=step, at=self.tick()
        )

    def succeeded(self, task_id: str) -> TaskSucceeded:
        return TaskSucceeded(task_id=task_id, at=self.tick())

    def failed(
        self, task_id: str, error: str = "failed", paths: tuple[tuple[str, ...], ...] = ()
    ) -> TaskFailed:
        return TaskFailed(task_id=task_id, error=error, failed_paths=paths, at=self.tick())

    def cancelled(self, task_id: str) -> TaskCancelled:
        return TaskCancelled(task_id=task_id, at=self.tick())

    def cleaned(self, *task_ids: str, hours: float = 24.0) -> TasksCleanedUp:
        return TasksCleanedUp(task_ids=task_ids, older_than_hours=hours, at=self.tick())

    def __call__(
        self,
        task_id: str = "t1",
        *,
        tree: Mapping[tuple[str, ...], tuple[str, ...]] = GUANGDONG_TREE,
        task_type: str = "province",
        target: str | None = "广东省",
        outcome: str | None = "succeeded",
    ) -> list[Event]:
        """A whole task: created, started, every list of ``tree`` with progress, then ``outcome``.

        ``outcome`` is ``"succeeded"``, ``"failed"``, ``"cancelled"`` or None (still running).
        """
        events: list[Event] = [self.created(task_id, task_type, target), self.started(task_id)]
        for i, (path, children) in enumerate(tree.items(), 1):
            events.append(self.fetched(task_id, path, children))
            events.append(self.progress(task_id, i * 99 // len(tree), f"step {i}"))
        if outcome == "succeeded":
            events.append(self.succeeded(task_id))
        elif outcome == "failed":
            events.append(self.failed(task_id))
        elif outcome == "cancelled":
            events.append(self.cancelled(task_id))
        return events


@pytest.fixture
def make_events() -> EventFactory:
    """A fresh :class:`EventFactory` (its clock starts at T0)."""
    return EventFactory()


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    """Where a test's event log lives: a file that does not exist yet, in its own directory."""
    return tmp_path / "events.hrlog"


# --- the actor system: isolation, leak checks, TaskManagers -----------------------------------


@pytest.fixture(autouse=True)
def _isolated_environment(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ``HOSPITAL_REFRESH_*`` setting leaks in from the shell, and the default log of a
    ``TaskManager()`` made without a path is in a temporary directory, never in the home one."""
    for name in list(os.environ):
        if name.startswith("HOSPITAL_REFRESH_"):
            monkeypatch.delenv(name)
    default_log = tmp_path_factory.mktemp("default-log") / "events.hrlog"
    monkeypatch.setenv("HOSPITAL_REFRESH_LOG", str(default_log))


@pytest.fixture(autouse=True)
def _no_leftover_actors() -> Iterator[None]:
    """Fail a test that leaves a pykka actor running or a new non-daemon thread behind (pykka's
    threads keep a process alive); stray actors are stopped so the next test starts clean."""
    before = set(threading.enumerate())
    yield
    left = pykka.ActorRegistry.get_all()
    if left:
        pykka.ActorRegistry.stop_all(block=True, timeout=10)
        pytest.fail(f"pykka actors left running after the test: {left}")
    stray = [t for t in threading.enumerate() if t not in before and not t.daemon]
    for thread in stray:
        thread.join(timeout=10)
    alive = [t for t in stray if t.is_alive()]
    if alive:
        pytest.fail(f"non-daemon threads left running after the test: {alive}")


ManagerFactory = Callable[..., "TaskManager"]


@pytest.fixture
def open_manager(log_path: Path) -> Iterator[ManagerFactory]:
    """``open_manager(service=None, **kwargs)`` makes a ``TaskManager`` on this test's log.

    ``service`` defaults to the simulated backend without latency; ``kwargs`` go to the
    constructor (``log_path`` defaults to the ``log_path`` fixture). Every manager made is closed
    at teardown, so a failing test still stops its actors.
    """
    from llm import SimulatedLLMService
    from tasks import TaskManager

    made: list[TaskManager] = []

    def make(service: LLMService | None = None, **kwargs: Any) -> TaskManager:
        kwargs.setdefault("log_path", log_path)
        manager = TaskManager(
            llm_service=service or SimulatedLLMService(latency_ms=(0, 0)), **kwargs
        )
        made.append(manager)
        return manager

    yield make
    for manager in made:
        manager.close()


# --- the simulated backend's answers, for comparing trees ----------------------------------------


def simulated_tree(province: str) -> dict[tuple[str, ...], tuple[str, ...]]:
    """What a clean province task on the simulated backend journals, ``path -> children``: the
    real divisions of ``province`` and the synthetic hospitals of each of its districts."""
    from llm import Divisions, synthetic_hospitals

    divisions = Divisions.load()
    tree = {(province,): tuple(divisions.children((province,)))}
    for city in tree[(province,)]:
        tree[(province, city)] = tuple(divisions.children((province, city)))
        for district in tree[(province, city)]:
            path = (province, city, district)
            tree[path] = tuple(synthetic_hospitals(path))
    return tree


# --- a chat-completions server on loopback (tests/chat_server.py) ------------------------------


@pytest.fixture
def chat_server() -> Iterator[Any]:
    """A started ``ChatServer`` on 127.0.0.1 (set its ``script``); closed at teardown."""
    from chat_server import ChatServer

    server = ChatServer()
    try:
        yield server
    finally:
        server.close()


# --- the HTTP service: create_app under uvicorn on a free loopback port -------------------------


class LiveServer:
    """``create_app(...)`` served by uvicorn in a thread on 127.0.0.1 (a port the OS picked)."""

    def __init__(self, app: Any, manager: TaskManager | None, **server_options: Any) -> None:
        import socket

        from tasks._http import make_server

        self.app = app
        self.manager = manager
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP,
        # and without it every keep-alive response waits out a 40 ms delayed ACK.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.bind(("127.0.0.1", 0))
        host, port = self._sock.getsockname()
        self.url = f"http://{host}:{port}"
        self.server = make_server(app, host, port, **{"access_log": False, **server_options})
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._sock]}, name="uvicorn-test"
        )
        self._thread.start()
        while not self.server.started:
            if not self._thread.is_alive():
                self._sock.close()
                raise RuntimeError("the test server did not start (see the log above)")
            self._thread.join(0.01)

    def client(self, token: str | None = None, **kwargs: Any) -> Any:
        """An ``httpx.Client`` on this server (close it: ``with server.client() as c``)."""
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)

    @staticmethod
    def iter_sse(response: Any) -> Iterator[tuple[str, Any]]:
        """The Server-Sent Events of a streamed ``httpx`` response, as (event name, JSON data)."""
        import json

        name, data = "message", []
        for line in response.iter_lines():
            if line.startswith(":"):  # a comment: keep-alive
                continue
            if not line:
                if data:
                    yield name, json.loads("\n".join(data))
                name, data = "message", []
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)

    def follow(self, client: Any, task_id: str) -> list[tuple[str, Any]]:
        """Read ``GET /tasks/{task_id}/progress`` to its end; every event, in order."""
        with client.stream("GET", f"/tasks/{task_id}/progress") as response:
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"].startswith("text/event-stream")
            return list(self.iter_sse(response))

    def stop(self) -> None:
        """Shut uvicorn down gracefully (the app's lifespan ends) and join its thread."""
        if self._thread.is_alive():
            self.server.should_exit = True
            self._thread.join(30)
            if self._thread.is_alive():
                self.server.force_exit = True
                self._thread.join(10)
        self._sock.close()
        assert not self._thread.is_alive(), "the test server did not stop"


ServerFactory = Callable[..., LiveServer]


@pytest.fixture
def live_server(log_path: Path) -> Iterator[ServerFactory]:
    """``live_server(manager=None, *, app_owns=False, server_options=None, **create_app_kwargs)``
    serves a new app.

    By default the app gets a ``TaskManager`` on this test's log with the simulated backend at
    0-2 ms, made and closed by the fixture. ``manager`` gives your own (the fixture leaves it to
    you). ``app_owns=True`` lets the app make and close its manager from settings (this log,
    0-2 ms). ``server_options`` go to ``uvicorn.Config``. Every server still running is stopped
    at teardown.
    """
    from llm import SimulatedLLMService
    from tasks import Settings, TaskManager, create_app

    servers: list[LiveServer] = []
    made: list[TaskManager] = []

    def start(
        manager: TaskManager | None = None,
        *,
        app_owns: bool = False,
        server_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> LiveServer:
        if app_owns:
            kwargs.setdefault(
                "settings", Settings(log_path=str(log_path), sim_latency_ms=(0.0, 2.0))
            )
        elif manager is None:
            manager = TaskManager(log_path, SimulatedLLMService(latency_ms=(0, 2)))
            made.append(manager)
        server = LiveServer(create_app(manager, **kwargs), manager, **(server_options or {}))
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
        for manager in made:
            manager.close()
