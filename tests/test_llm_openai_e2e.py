"""Whole refreshes through a chat-completions server on loopback: TaskManager, the actor system,
the event log and the CLI, with the real HTTP backend and a server that answers like a model.

The server answers each prompt that the backend really builds for a node of 北京市 from the
reference divisions (and the synthetic hospitals), so a wrong path in a prompt shows up as an
unexpected prompt, not as a plausible answer.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from chat_server import ChatServer, Reply, Request, completion, items_json
from conftest import ManagerFactory

from actors import bridge
from events import FetchRetried
from llm import Divisions, child_level, synthetic_hospitals
from llm._openai import build_messages
from store import INTACT, iter_valid, snapshot_path
from tasks import Settings
from tasks._export import to_csv, to_nested

SECRET = "sk-e2e-9f8e7d6c5b4aSECRET"
PROVINCE = "北京市"
INVENTED = (PROVINCE, PROVINCE, "望京区")
"""A district a model made up: not in GB/T 2260."""

Hook = Callable[[Request, tuple[str, ...], int], Reply | None]
"""Given a request, its node's path and the how-many-th call for that path this is (from 1),
a reply to send instead of the answer, or None."""


class ProvinceAnswers:
    """Answers one province task's prompts from the reference divisions, like a good model.

    ``extra`` adds children to a node (a model's invention), each with synthetic hospitals;
    ``hook`` may replace an answer (an error, a rate limit); every reply waits ``delay`` first.
    """

    def __init__(
        self,
        province: str,
        *,
        extra: dict[tuple[str, ...], tuple[str, ...]] | None = None,
        hook: Hook | None = None,
        delay: float = 0.0,
    ) -> None:
        divisions = Divisions.load()
        tree: dict[tuple[str, ...], tuple[str, ...]] = {}
        tree[(province,)] = tuple(divisions.children((province,)))
        for city in tree[(province,)]:
            tree[(province, city)] = tuple(divisions.children((province, city)))
        for path, names in (extra or {}).items():
            tree[path] = (*tree[path], *names)
        for path in [p for p in tree if len(p) == 2]:
            for district in tree[path]:
                tree[(*path, district)] = tuple(synthetic_hospitals((*path, district)))
        self.tree = tree
        self.hook = hook
        self.delay = delay
        self.calls: Counter[tuple[str, ...]] = Counter()
        self.arrivals: list[tuple[tuple[str, ...], float]] = []
        """(path, arrival time) of every request, in order of arrival."""
        self._by_prompt = {
            build_messages(child_level(path), path, adcode=divisions.adcode(path))[1][
                "content"
            ]: path
            for path in tree
        }

    def usage(self, path: tuple[str, ...]) -> tuple[int, int]:
        """The tokens the answer for ``path`` reports: (prompt, completion)."""
        return 40 + len(path), 5 * len(self.tree[path])

    def __call__(self, request: Request) -> Reply:
        path = self._by_prompt.get(request.prompt)
        if path is None:
            return Reply(400, {"error": {"message": f"unexpected prompt: {request.prompt[:40]}"}})
        self.calls[path] += 1
        self.arrivals.append((path, request.arrived))
        replaced = self.hook(request, path, self.calls[path]) if self.hook else None
        if replaced is not None:
            return replaced
        names = self.tree[path]
        # some answers fenced and bare, as models write them
        content = (
            f"```json\n{json.dumps(list(names), ensure_ascii=False)}\n```"
            if len(path) == 3
            else items_json(names)
        )
        prompt_tokens, completion_tokens = self.usage(path)
        body = completion(content, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        return Reply(200, body, delay=self.delay)


def nested(tree: dict[tuple[str, ...], tuple[str, ...]], root: tuple[str, ...]) -> dict[str, Any]:
    """``path -> children`` as the nested dicts of ``get_task_tree``."""
    names = tree.get(root)
    return {} if names is None else {n: (nested(tree, (*root, n)) or None) for n in names}


def events_in(log_path: Path) -> list[Any]:
    _, records, result = iter_valid(str(log_path))
    assert result.fault == INTACT
    return [r.event for r in records]


def http_service(server: ChatServer) -> Any:
    """The backend the settings build for ``--llm openai --base-url URL --model test-model``."""
    return Settings(
        llm="openai", llm_base_url=server.base_url, llm_model="test-model"
    ).llm_service()


CUT_OFF_USAGE = {"prompt_tokens": 77, "completion_tokens": 4096}
"""What the answer cut off at the model's output limit cost."""


def test_province_refresh_through_a_chat_completions_server(
    chat_server: ChatServer,
    open_manager: ManagerFactory,
    log_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """北京市 end to end over HTTP: the tree, tokens (of rejected answers too), the invented
    district kept but unverified in status, tree and export, failures retried, at most and at
    least 5 calls in flight, and the API key in every request but in no log line and no byte
    of the event log."""
    monkeypatch.setenv("HOSPITAL_REFRESH_API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    dongcheng = (PROVINCE, PROVINCE, "东城区")
    xicheng = (PROVINCE, PROVINCE, "西城区")

    def hook(request: Request, path: tuple[str, ...], call: int) -> Reply | None:
        if path == dongcheng and call == 1:  # a buggy gateway that echoes our headers
            echo = request.headers.get("Authorization", "")
            return Reply(502, {"error": {"message": f"upstream failed for {echo}"}})
        if path == xicheng and call == 1:
            cut = completion('{"items": ["北京', finish_reason="length", **CUT_OFF_USAGE)
            return Reply(200, cut)
        return None

    answers = ProvinceAnswers(PROVINCE, extra={INVENTED[:2]: (INVENTED[2],)}, hook=hook, delay=0.03)
    chat_server.script = answers

    async def body() -> tuple[str, dict[str, Any], dict[str, Any], str, dict[str, Any]]:
        manager = open_manager(http_service(chat_server), backoff_base=0.001)
        task_id = await manager.create_refresh_task("province", PROVINCE)
        assert await manager.start_task(task_id)
        status = await manager.wait_for_task(task_id, timeout=30)
        tree = await manager.get_task_tree(task_id)
        assert tree is not None
        exported = await bridge(manager.system.query(lambda p: to_csv(p.tasks[task_id])))
        as_json = await bridge(manager.system.query(lambda p: to_nested(p.tasks[task_id])))
        await manager.aclose()
        return task_id, status, tree, exported, as_json

    task_id, status, tree, exported, as_json = asyncio.run(body())

    assert status["status"] == "SUCCEEDED"
    assert tree["children"] == nested(answers.tree, (PROVINCE,))
    districts = answers.tree[INVENTED[:2]]
    hospitals = sum(len(answers.tree[(*INVENTED[:2], d)]) for d in districts)
    assert status["counts"] == {
        "provinces": 1,
        "cities": 1,
        "districts": len(districts),
        "hospitals": hospitals,
    }
    # every answer's tokens, the rejected cut-off one's included: it was paid for
    prompt, done = map(sum, zip(*(answers.usage(p) for p in answers.tree), strict=True))
    prompt += CUT_OFF_USAGE["prompt_tokens"]
    done += CUT_OFF_USAGE["completion_tokens"]
    assert status["tokens"] == {"prompt": prompt, "completion": done, "total": prompt + done}

    # checked against reference data: the invented district is kept, marked, counted
    assert status["verified"]["cities"] == {"checked": 1, "verified": 1, "share": 1.0}
    checked = len(districts)
    assert status["verified"]["districts"] == {
        "checked": checked,
        "verified": checked - 1,
        "share": round((checked - 1) / checked, 4),
    }
    assert status["unverified_paths"] == [list(INVENTED)]
    assert tree["unverified"] == [list(INVENTED)]
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert list(rows[0]) == ["province", "city", "district", "hospital"]
    assert INVENTED[2] in {r["district"] for r in rows}
    city = as_json["provinces"][0]["cities"][0]
    entries = {d["name"]: d for d in city["districts"]}
    assert (entries["朝阳区"]["adcode"], entries["朝阳区"]["verified"]) == ("110105", True)
    assert (entries[INVENTED[2]]["adcode"], entries[INVENTED[2]]["verified"]) == (None, False)

    # failures were retried, each said for what it was, with the echoed key redacted
    retried = {e.path: e.error for e in events_in(log_path) if isinstance(e, FetchRetried)}
    assert set(retried) == {dongcheng, xicheng}
    assert "server error (502)" in retried[dongcheng]
    assert "[redacted]" in retried[dongcheng]
    assert "finish_reason: length" in retried[xicheng]
    assert answers.calls[dongcheng] == answers.calls[xicheng] == 2
    assert all(answers.calls[p] == 1 for p in answers.tree if p not in (dongcheng, xicheng))

    # the bound: five calls at once, never six
    assert chat_server.max_in_flight == 5

    # the key: in every request, nowhere else
    assert {r.headers.get("Authorization") for r in chat_server.requests} == {f"Bearer {SECRET}"}
    assert any(r.name.startswith("hospital_refresh") for r in caplog.records)
    assert any(r.name.startswith("httpx") for r in caplog.records)
    assert SECRET not in caplog.text
    assert all(SECRET not in r.getMessage() for r in caplog.records)
    for path in (log_path, snapshot_path(str(log_path))):
        if os.path.exists(path):
            assert SECRET.encode() not in Path(path).read_bytes()
    assert task_id


def test_a_429_pauses_the_whole_pool_and_the_refresh_succeeds(
    chat_server: ChatServer, open_manager: ManagerFactory, log_path: Path
) -> None:
    """One 429 with retry-after-ms 250 stops every call for 250 ms, not only its own; that call
    is retried no sooner, and the task still succeeds.

    Answers take 0.1 s, so the five hospital calls of the first batch still hold every slot when
    the 429 comes back: any later call is sent after the client has seen it.
    """
    limited: list[float] = []

    def hook(request: Request, path: tuple[str, ...], call: int) -> Reply | None:
        if len(path) == 3 and not limited:
            limited.append(time.monotonic())
            return Reply(429, {"error": {"message": "rpm exceeded"}}, {"retry-after-ms": "250"})
        return None

    answers = ProvinceAnswers(PROVINCE, hook=hook, delay=0.1)
    chat_server.script = answers

    async def body() -> dict[str, Any]:
        manager = open_manager(http_service(chat_server), backoff_base=0.001)
        task_id = await manager.create_refresh_task("province", PROVINCE)
        assert await manager.start_task(task_id)
        return await manager.wait_for_task(task_id, timeout=30)

    status = asyncio.run(body())
    assert status["status"] == "SUCCEEDED"
    assert limited
    hospital_calls = sorted(t for path, t in answers.arrivals if len(path) == 3)
    later = hospital_calls[5:]  # after the first batch of five, which holds every slot
    assert len(later) == 16 + 1 - 5  # every district once, the rate-limited one twice
    assert min(later) >= limited[0] + 0.25
    retries = [e for e in events_in(log_path) if isinstance(e, FetchRetried)]
    assert len(retries) == 1
    assert retries[0].delay_s >= 0.25
    assert "rate limited (429)" in retries[0].error


def test_a_rejected_key_fails_the_task_at_once(
    chat_server: ChatServer, open_manager: ManagerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 401 is permanent: one request, no retry, the task FAILED saying which key to check."""
    monkeypatch.setenv("HOSPITAL_REFRESH_API_KEY", SECRET)
    chat_server.script = lambda request: Reply(401, {"error": {"message": "invalid api key"}})

    async def body() -> dict[str, Any]:
        manager = open_manager(http_service(chat_server), backoff_base=0.001)
        task_id = await manager.create_refresh_task("province", PROVINCE)
        assert await manager.start_task(task_id)
        return await manager.wait_for_task(task_id, timeout=30)

    status = asyncio.run(body())
    assert status["status"] == "FAILED"
    assert status["retries"] == 0
    assert status["failed_paths"] == [[PROVINCE]]
    assert len(chat_server.requests) == 1
    assert "API key rejected (401)" in status["error"]
    assert "$HOSPITAL_REFRESH_API_KEY" in status["error"]
    assert SECRET not in status["error"]


def test_cli_run_with_llm_openai_base_url_and_model(
    chat_server: ChatServer, tmp_path: Path
) -> None:
    """``hospital-refresh run --llm openai --base-url URL --model NAME --province 北京市`` runs
    to SUCCEEDED, prints tokens and the verified shares, and exports the hospitals."""
    answers = ProvinceAnswers(PROVINCE)
    chat_server.script = answers
    log = tmp_path / "cli.hrlog"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOSPITAL_REFRESH_")}
    cli = [sys.executable, "-m", "tasks.cli"]
    run = subprocess.run(
        [
            *cli,
            "run",
            "--llm",
            "openai",
            "--base-url",
            chat_server.base_url,
            "--model",
            "test-model",
            "--province",
            PROVINCE,
            "--log",
            str(log),
            "--backoff-base",
            "0.001",
            "--plain",
            "--log-level",
            "WARNING",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert " SUCCEEDED in " in run.stdout
    prompt, done = map(sum, zip(*(answers.usage(p) for p in answers.tree), strict=True))
    assert f"tokens {prompt + done} (prompt {prompt}, completion {done})" in run.stdout
    assert "verified against GB/T 2260: cities 1/1, districts 16/16" in run.stdout
    assert {r.body["model"] for r in chat_server.requests} == {"test-model"}
    task_id = run.stdout.split("task ", 1)[1].split()[0]
    export = subprocess.run(
        [*cli, "export", task_id, "--log", str(log), "--format", "csv"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert export.returncode == 0, export.stderr
    rows = list(csv.DictReader(io.StringIO(export.stdout)))
    assert rows
    assert {r["city"] for r in rows} == {"北京市"}
