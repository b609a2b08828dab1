"""A real chat-completions server on loopback, scripted by the test that starts it.

``ChatServer(script)`` listens on 127.0.0.1 on a free port and answers ``POST .../chat/completions``
with whatever ``script(request)`` returns (a ``Reply``). It is a plain ``http.server`` speaking
HTTP/1.1 with keep-alive, one thread per connection, so the client under test goes through its
real connection pool, real timeouts and real status codes.

It records every request (headers, JSON body, arrival time) and counts the requests being handled
at once (``max_in_flight``); a request stops counting before its answer is written, so the count
never runs ahead of the client's own. ``Reply.delay`` sleeps before answering, cut short when the
server closes, so a test never waits for a handler it has given up on. ``close()`` shuts the
listener and every open connection and joins their threads.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["ChatServer", "Reply", "Request", "completion", "http_date", "items_json"]


@dataclass(frozen=True)
class Request:
    """One request the server received."""

    path: str
    headers: dict[str, str]
    body: Any
    """The JSON body, or None when it was not JSON."""
    arrived: float
    """``time.monotonic()`` when its headers were read."""
    client_port: int = 0
    """The client's port: requests on one kept-alive connection share it."""

    @property
    def prompt(self) -> str:
        """The content of the last message (the user's prompt), or ""."""
        try:
            return str(self.body["messages"][-1]["content"])
        except (KeyError, IndexError, TypeError):
            return ""


@dataclass(frozen=True)
class Reply:
    """What to answer: a status, a body (a dict is sent as JSON), headers, and a delay first."""

    status: int = 200
    body: Any = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


Script = Callable[[Request], Reply]


def items_json(names: Sequence[str]) -> str:
    """The answer content ``{"items": [...]}`` as a model writes it."""
    return json.dumps({"items": list(names)}, ensure_ascii=False)


def completion(
    content: str | None,
    *,
    finish_reason: str = "stop",
    prompt_tokens: int = 100,
    completion_tokens: int = 20,
    model: str = "test-model",
) -> dict[str, Any]:
    """A chat-completions answer body carrying ``content``."""
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1_750_000_000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def http_date(seconds_from_now: float) -> str:
    """An HTTP date (RFC 9110 IMF-fixdate) ``seconds_from_now`` in the future."""
    return email.utils.format_datetime(
        datetime.now(UTC) + timedelta(seconds=seconds_from_now), usegmt=True
    )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stall
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.owner._opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._closed(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def do_POST(self) -> None:
        owner = self.server.owner
        arrived = time.monotonic()
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        request = Request(
            self.path, dict(self.headers.items()), body, arrived, int(self.client_address[1])
        )
        owner._enter(request)
        try:
            try:
                reply = owner.script(request)
            except Exception as exc:  # a bug in the script: say so, loudly
                reply = Reply(500, {"error": {"message": f"script failed: {exc!r}"}})
            if reply.delay:
                owner.stopping.wait(reply.delay)
        finally:
            owner._leave()
        payload = reply.body
        if isinstance(payload, dict | list):
            payload = json.dumps(payload, ensure_ascii=False).encode()
        elif isinstance(payload, str):
            payload = payload.encode()
        try:
            self.send_response(reply.status)
            content_type = "application/json" if payload[:1] in (b"{", b"[") else "text/plain"
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
        except OSError:  # the client gave up (its timeout): nothing to answer
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: ChatServer

    def handle_error(self, request: Any, client_address: Any) -> None:  # quiet
        return


class ChatServer:
    """A scripted chat-completions server on 127.0.0.1; use it as a context manager."""

    def __init__(self, script: Script | None = None) -> None:
        self.script: Script = script or (lambda request: Reply(200, completion(items_json([]))))
        self.requests: list[Request] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """The ``base_url`` a client is given: ``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    def _opened(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)

    def _closed(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)

    def _enter(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def close(self) -> None:
        """Stop listening, end every open connection and wait for the handler threads."""
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                conn.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with self._lock:
                if not self._connections:
                    break
            time.sleep(0.005)

    def __enter__(self) -> ChatServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
