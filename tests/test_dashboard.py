"""The dashboard in a real headless browser: Debian's chromium, driven over the Chrome DevTools
Protocol on a pipe (``--remote-debugging-pipe``: no port, no driver, no extra package).

``scripts/install-browser.sh`` installs chromium (``make test`` in CI runs it first). Where it is
not installed the tests are skipped, and the skip says why.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ServerFactory, simulated_tree

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--mute-audio",
    "--remote-debugging-pipe",
)
WAIT_S = 30.0
"""How long a step may take before the test gives up (a bound, not a timing assertion)."""


def find_chromium() -> str:
    """The chromium binary, or skip the test saying why there is none."""
    for candidate in (
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip(
        "the dashboard's browser test needs Debian's chromium, which is not installed "
        "(no /usr/bin/chromium): run `bash scripts/install-browser.sh` "
        "(apt-get install chromium) to run it"
    )


def _high_fd(fd: int) -> int:
    """``fd`` moved to 10 or above, so that bash's ``3<&N 4>&M`` cannot clobber it."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return moved


class Browser:
    """A headless chromium and one page, driven with CDP messages over fds 3 and 4."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_child_r, self._to_child = map(_high_fd, os.pipe())
        self._from_child, from_child_w = map(_high_fd, os.pipe())
        flags = " ".join(shlex.quote(f) for f in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"))
        script = (
            f"exec {shlex.quote(binary)} {flags} about:blank "
            f"3<&{to_child_r} 4>&{from_child_w} {to_child_r}<&- {from_child_w}>&-"
        )
        self._proc = subprocess.Popen(
            ["/bin/bash", "-c", script],
            pass_fds=(to_child_r, from_child_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._next_id = 0
        self._replies: dict[int, queue.Queue[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.errors: list[str] = []
        """Uncaught exceptions and console errors of the page."""
        self._reader = threading.Thread(target=self._read, name="cdp-reader", daemon=True)
        self._reader.start()
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.send("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=True)

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_child, 1 << 16)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                self._dispatch(json.loads(raw))

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "id" in message:
            with self._lock:
                box = self._replies.get(message["id"])
            if box is not None:
                box.put(message)
            return
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append(details.get("exception", {}).get("description") or details["text"])
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append(" ".join(str(a.get("value", a)) for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(params["entry"]["text"])

    def send(self, method: str, *, session: bool = False, **params: Any) -> dict[str, Any]:
        """Send one CDP command (to the page's session if ``session``); its result."""
        with self._lock:
            self._next_id += 1
            ident = self._next_id
            box: queue.Queue[dict[str, Any]] = queue.Queue()
            self._replies[ident] = box
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if session:
            message["sessionId"] = self._session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        try:
            reply = box.get(timeout=WAIT_S)
        except queue.Empty:
            raise AssertionError(f"chromium did not answer {method} within {WAIT_S:g} s") from None
        finally:
            with self._lock:
                del self._replies[ident]
        if "error" in reply:
            raise AssertionError(f"{method} failed: {reply['error']}")
        return reply["result"]

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises are awaited)."""
        result = self.send(
            "Runtime.evaluate",
            session=True,
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        """Navigate to ``url`` and wait until the page and its script have loaded."""
        self.send("Page.navigate", session=True, url=url)
        self.wait_for("document.readyState === 'complete' && !!document.getElementById('tasks')")

    def wait_for(self, expression: str, what: str | None = None) -> Any:
        """Evaluate ``expression`` until it is truthy; its value. Fails after ``WAIT_S``."""
        deadline = time.monotonic() + WAIT_S
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                page = self.evaluate("document.body ? document.body.innerText : ''")
                raise AssertionError(
                    f"waited {WAIT_S:g} s for {what or expression}; the page shows:\n{page}"
                )
            time.sleep(0.05)

    def close(self) -> None:
        """Close the browser and its pipes."""
        with contextlib.suppress(Exception):
            self.send("Browser.close")
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)
        os.close(self._to_child)
        self._reader.join(timeout=10)
        os.close(self._from_child)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Callable[[], Browser]]:
    """``browser()`` starts a headless chromium with a fresh profile; closed at teardown."""
    binary = find_chromium()
    started: list[Browser] = []

    def start() -> Browser:
        started.append(Browser(binary, tmp_path / f"profile-{len(started)}"))
        return started[-1]

    yield start
    for b in started:
        b.close()


def row(task_id: str, selector: str) -> str:
    """A JavaScript expression: the text of ``selector`` in the task's row ('' if none yet)."""
    return (
        f"((document.querySelector('tr[data-task-id=\"{task_id}\"] {selector}') || {{}})"
        ".textContent || '')"
    )


def create_and_start_from_the_page(page: Browser, province: str) -> str:
    """Fill the form, press Create, then the new row's Start button; the task's id."""
    page.evaluate(
        f"document.getElementById('task-type').value = 'province';"
        f"document.getElementById('target').value = {json.dumps(province)};"
        "document.getElementById('create-button').click(); true"
    )
    message = page.wait_for(
        "(document.getElementById('message').textContent.match(/^created (\\w+)/) || [])[1]",
        "the page to say the task was created",
    )
    task_id = str(message)
    page.wait_for(row(task_id, ".status") + " === 'PENDING'", "the new task's row")
    page.evaluate(
        f"document.querySelector('tr[data-task-id=\"{task_id}\"] button[data-action=start]')"
        ".click(); true"
    )
    return task_id


def test_a_task_started_from_the_dashboard_reaches_100_percent(
    live_server: ServerFactory, browser: Callable[[], Browser]
) -> None:
    """The page loads; a province task created and started with its buttons shows 100% and
    SUCCEEDED in its row and in the detail panel, whose tree holds every city fetched."""
    server = live_server()
    page = browser()
    page.open(f"{server.url}/")
    page.wait_for("document.getElementById('health').textContent === 'healthy'")
    assert page.evaluate("document.getElementById('token-form').hidden") is True
    task_id = create_and_start_from_the_page(page, "广东省")
    page.wait_for(
        f"{row(task_id, '.pct')} === '100%' && {row(task_id, '.status')} === 'SUCCEEDED'",
        "the row to show 100% and SUCCEEDED",
    )
    width = f"document.querySelector('tr[data-task-id=\"{task_id}\"] .fill').style.width"
    assert page.evaluate(width) == "100%"
    page.wait_for("document.getElementById('detail-pct').textContent === '100%'")
    page.wait_for("document.getElementById('detail-status').textContent === 'SUCCEEDED'")
    cities = simulated_tree("广东省")[("广东省",)]
    summaries = page.wait_for(
        f"(() => {{ const s = [...document.querySelectorAll('#tree > details > summary')]"
        f"  .map(e => e.textContent); return s.length === {len(cities)} && s; }})()",
        "the tree to show every city",
    )
    assert [s.split(" (")[0] for s in summaries] == list(cities)
    assert page.evaluate(
        f"document.querySelector('tr[data-task-id=\"{task_id}\"] button[data-action=start]').hidden"
    )
    with server.client() as client:
        assert client.get(f"/tasks/{task_id}").json()["status"] == "SUCCEEDED"
    assert page.errors == []


def test_the_dashboard_asks_for_the_token_and_then_works(
    live_server: ServerFactory,
    browser: Callable[[], Browser],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a token set, the page loads, asks for the token, and with it lists, creates and
    follows a task to 100% (progress streamed with the Authorization header)."""
    monkeypatch.setenv("HOSPITAL_REFRESH_TOKEN", "dashboard-token")
    server = live_server()
    page = browser()
    page.open(f"{server.url}/")
    page.wait_for("!document.getElementById('token-form').hidden", "the token form")
    page.evaluate(
        "document.getElementById('token').value = 'dashboard-token';"
        "document.getElementById('token-form').requestSubmit(); true"
    )
    page.wait_for("document.getElementById('token-form').hidden")
    assert page.evaluate("sessionStorage.getItem('hospital-refresh-token')") == "dashboard-token"
    task_id = create_and_start_from_the_page(page, "北京市")
    page.wait_for(
        f"{row(task_id, '.pct')} === '100%' && {row(task_id, '.status')} === 'SUCCEEDED'",
        "the row to show 100% and SUCCEEDED",
    )
    page.wait_for("document.getElementById('detail-status').textContent === 'SUCCEEDED'")
    # The only errors: the 401s of the calls made before the token was given.
    assert all("status of 401" in error for error in page.errors), page.errors
