"""``OpenAICompatibleLLMService``: a real LLM over the chat-completions protocol, with httpx.

DeepSeek, Qwen (DashScope compatible mode), Moonshot, Zhipu, OpenAI and local Ollama, vLLM or
llama.cpp servers all speak ``POST {base_url}/chat/completions``; ``llm._providers`` holds their
addresses and quirks. Each node is one call at temperature 0, with a Chinese prompt that names
the node's FULL path (吉林省长春市朝阳区, never a bare 朝阳区) and its adcode when known, and asks
for the JSON object ``{"items": ["名称", ...]}``. A bare JSON list, a ```json fence around the
answer and a reasoning model's leading ``<think>...</think>`` are tolerated. The answer is
returned raw, as ``Names`` carrying the call's token ``Usage``; ``fetch_children`` validates it.

What goes wrong, and what the caller is told (the pool retries every ``RetryableLLMError``):

=================================================  =========================================
HTTP 408, connect/read/write/pool timeout          ``LLMTimeout``
HTTP 409, >= 500, connection refused/reset         ``LLMServerError`` (``retry_after`` if sent)
HTTP 429                                           ``LLMRateLimited(retry_after=...)`` and a
                                                   cooldown shared by every call (see below)
blank content, content not JSON or without a list  ``LLMMalformedOutput``
``finish_reason: "length"`` (answer cut off)       ``LLMMalformedOutput``
a 200 whose body is not a chat completion          ``LLMServerError``
HTTP 400, 401, 402, 403, 404, 422, other 4xx       ``PermanentLLMError``, said for people:
                                                   "API key rejected (401)...",
                                                   "insufficient balance (402)..."
429 ``insufficient_quota``, ``content_filter``     ``PermanentLLMError``
=================================================  =========================================

``retry-after-ms`` and ``Retry-After`` (seconds or an HTTP date) are honoured, capped at
``MAX_RETRY_AFTER`` (120 s). The shared cooldown: a 429 sets a "not before" time on the service,
and every call waits for it before sending, so one 429 slows the whole pool, not only the call
that got it (which the pool itself retries no sooner than ``retry_after``). The wait happens in
the caller's pool slot, on purpose: while the server wants quiet, no slot should send anyway.

The API key is read from ``HOSPITAL_REFRESH_API_KEY``, else the provider's usual variable
(``DEEPSEEK_API_KEY``...); local servers need none. It is sent in the ``Authorization`` header and
nowhere else: not in a log line, an exception message (server messages are redacted too) or the
repr, which names only the variable it came from.

One pooled ``httpx.AsyncClient`` per service, made on first use on the loop that runs the calls
(the fetch pool's shared loop: ``any_event_loop`` stays False) and closed by ``aclose()``.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import json
import math
import os
import re
import ssl
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import httpx
import structlog

from ._divisions import Divisions
from ._errors import (
    LLMError,
    LLMMalformedOutput,
    LLMRateLimited,
    LLMServerError,
    LLMTimeout,
    PermanentLLMError,
)
from ._providers import Provider, get_provider
from ._service import LEVELS, LLMService, Place
from ._usage import Names, Usage

__all__ = [
    "API_KEY_ENV",
    "MAX_RETRY_AFTER",
    "OpenAICompatibleLLMService",
    "build_messages",
    "parse_items",
    "retry_after_seconds",
]

log = structlog.get_logger("hospital_refresh.llm")

API_KEY_ENV: Final = "HOSPITAL_REFRESH_API_KEY"
"""Holds the API key for any provider; wins over the provider's own variable."""

MAX_RETRY_AFTER: Final = 120.0
"""Longest wait a server's ``Retry-After`` is honoured for, in seconds."""

_EXCERPT = 200

_LEVEL_WORDS = {
    "province": "省级行政区划",
    "city": "市级行政区划",
    "district": "县级行政区划",
    "hospital": "医院",
}

SYSTEM_PROMPT: Final = (
    "你是熟悉中华人民共和国行政区划（GB/T 2260）和医疗机构名录的数据助手。"
    '只输出一个 JSON 对象，格式严格为 {"items": ["名称1", "名称2"]}，'
    "不要输出解释、编号、Markdown 或其他任何文字。名称一律使用规范全称，不重复。"
)

# DeepSeek and Qwen require the word "json" in the prompt when response_format is json_object.
_JSON_ASK = '只输出 json 对象，格式为 {"items": ["名称", ...]}。'


# --- prompts -------------------------------------------------------------------------------------


def _where(path: Sequence[str]) -> str:
    """吉林省长春市朝阳区; a municipality's self-named city is said once (北京市)."""
    names: list[str] = []
    for name in path:
        if not names or names[-1] != name:
            names.append(name)
    return "".join(names)


def build_messages(
    level: str,
    path: Sequence[str],
    *,
    adcode: str | None = None,
    max_hospitals: int = 100,
    divisions: Divisions | None = None,
    placed: bool = True,
) -> list[dict[str, str]]:
    """The chat messages asking for the ``level`` names under the node at ``path``.

    ``level`` is the children's level ("province" for the country, whose ``path`` is ``()``).
    ``path`` is the node's full path; ``placed=False`` says it is only a bare name that the
    caller could not place. Where the reference data reshapes the hierarchy (a municipality is
    its own only city; 东莞市 and 仙桃市 are their own only district), the prompt of a placed
    node says so, so that the answer can match it.

    >>> build_messages("district", ("吉林省", "长春市"), adcode="220100")[1]["content"][:24]
    '请列出吉林省长春市（行政区划代码 220100）'
    """
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; expected one of {', '.join(LEVELS)}")
    divisions = divisions or Divisions.load()
    full = tuple(path)
    where = _where(full)
    code = f"（行政区划代码 {adcode}）" if adcode else ""
    self_only = False
    if placed and full and level in ("city", "district"):
        canonical = divisions.resolve_path(full)
        if canonical is not None and canonical in divisions:
            try:
                self_only = divisions.children(canonical) == [canonical[-1]]
            except KeyError:
                self_only = False
    if level == "province":
        ask = (
            "请列出中国全部省级行政区划（省、自治区、直辖市、特别行政区，含台湾省）的规范全称，"
            "例如“北京市”“广西壮族自治区”“香港特别行政区”。"
        )
    elif self_only:
        unit = "市级" if level == "city" else "县级"
        ask = (
            f"{where}{code}在本名录中本身就是它唯一的{unit}单位"
            f"（直辖市、不设区县的市和省直辖的县级单位都如此），"
            f'所以请只返回 {{"items": ["{full[-1]}"]}}。'
        )
    elif level == "city":
        ask = (
            f"请列出{where}{code}下辖的全部市级行政区划（地级市、地区、自治州、盟）的规范全称。"
            "省直辖的县级行政单位（例如湖北省的仙桃市、河南省的济源市）也各作为一项列出。"
        )
    elif level == "district":
        ask = (
            f"请列出{where}{code}下辖的全部县级行政区划"
            "（市辖区、县级市、县、自治县、旗、自治旗、特区、林区）的规范全称。"
        )
    else:
        ask = (
            f"请列出{where}{code}境内的医院的规范全称，包括综合医院、中医医院、专科医院和"
            f"妇幼保健院，公立和民营均可；只列真实存在的医院，最多 {max_hospitals} 家。"
            f"不同城市常有同名区县（例如北京市朝阳区和吉林省长春市朝阳区），只列{where}的医院。"
        )
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": ask + _JSON_ASK},
    ]


# --- answers -------------------------------------------------------------------------------------

_THINK = re.compile(r"^\s*<think>.*?</think>", re.DOTALL)
_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", re.DOTALL)


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _EXCERPT else flat[: _EXCERPT - 3] + "..."


def parse_items(content: str) -> list[Any]:
    """The list inside an LLM's answer: ``{"items": [...]}``, a bare ``[...]``, either inside
    a ```json fence or after a ``<think>`` block, or an object whose only list is the answer.

    The items are returned as found (a ``{"name": ...}`` object becomes its name); whether they
    are acceptable names is ``validate_names``'s call. Raises ``LLMMalformedOutput``.

    >>> parse_items('```json\\n{"items": ["东城区", "西城区"]}\\n```')
    ['东城区', '西城区']
    """
    text = _THINK.sub("", content, count=1).strip()
    if not text:
        raise LLMMalformedOutput("the LLM gave a blank answer")
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        value = json.loads(text)
    except ValueError:
        value = _first_json_value(text)
    if isinstance(value, dict):
        value = _list_of(value, text)
    if not isinstance(value, list):
        raise LLMMalformedOutput(
            f'the LLM answered JSON {type(value).__name__}, not {{"items": [...]}}: '
            f"{_excerpt(text)}"
        )
    return [_item(item) for item in value]


def _first_json_value(text: str) -> Any:
    """The first JSON object or list in ``text`` (a model that chats around its answer)."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[\[{]", text):
        try:
            return decoder.raw_decode(text, match.start())[0]
        except ValueError:
            continue
    raise LLMMalformedOutput(f"the LLM's answer is not JSON: {_excerpt(text)}")


def _list_of(obj: dict[str, Any], text: str) -> Any:
    if "items" in obj:
        return obj["items"]
    lists = [v for v in obj.values() if isinstance(v, list)]
    if len(lists) == 1:
        return lists[0]
    raise LLMMalformedOutput(f'the LLM\'s JSON object has no "items" list: {_excerpt(text)}')


def _about_json_mode(message: str) -> bool:
    lowered = message.lower()
    return any(w in lowered for w in ("response_format", "response format", "json_object"))


def _item(item: Any) -> Any:
    if isinstance(item, dict) and isinstance(item.get("name"), str):
        return item["name"]
    return item


# --- Retry-After ---------------------------------------------------------------------------------


def retry_after_seconds(
    headers: Mapping[str, str], now: datetime | None = None, cap: float = MAX_RETRY_AFTER
) -> float | None:
    """The wait a response asks for, capped at ``cap``; None if it names none (or nonsense).

    ``retry-after-ms`` (OpenAI's, milliseconds) wins over ``Retry-After``, which is either
    seconds or an HTTP date (a date in the past means 0).

    >>> retry_after_seconds({"retry-after": "3"}), retry_after_seconds({"retry-after-ms": "250"})
    (3.0, 0.25)
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    seconds: float | None = None
    millis = lowered.get("retry-after-ms")
    if millis is not None:
        seconds = _number(millis)
        seconds = None if seconds is None else seconds / 1000
    if seconds is None and "retry-after" in lowered:
        raw = lowered["retry-after"].strip()
        seconds = _number(raw)
        if seconds is None:
            try:
                when = email.utils.parsedate_to_datetime(raw)
            except (TypeError, ValueError, IndexError):
                return None
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            seconds = max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
    return None if seconds is None else min(seconds, cap)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


# --- the service ---------------------------------------------------------------------------------


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context per process (building one reads the CA bundle: ~70 ms)."""
    return httpx.create_ssl_context(trust_env=True)


def _check_key(key: str, source: str) -> str:
    # h11 puts a rejected header value in its exception message: refuse it here, unquoted.
    if not key.isascii() or not key.isprintable() or any(c.isspace() for c in key):
        raise ValueError(
            f"the API key in ${source} contains spaces, control or non-ASCII characters; "
            "paste it again"
        )
    return key


class OpenAICompatibleLLMService(LLMService):
    """An LLM behind a chat-completions endpoint (see the module docstring for the behaviour).

    ``provider`` is a preset name (``deepseek``, ``qwen``, ``moonshot``, ``zhipu``, ``openai``,
    ``ollama``, ``vllm``, ``llamacpp``) or a ``Provider``; ``base_url`` and ``model`` override
    its defaults. With neither ``provider`` nor ``base_url`` the preset is ``openai``; with only
    ``base_url`` the server is generic: the key, optional, comes from ``HOSPITAL_REFRESH_API_KEY``
    (or ``api_key_env``) only, so that a key meant for one provider is never sent to another
    server. ``api_key_env`` replaces the provider's variable. ``json_mode`` None follows the
    preset; a server that rejects ``response_format`` with a 400 then gets JSON asked for in the
    prompt only. ``timeout`` bounds each HTTP request (connecting: at most 10 s).
    ``rate_limit_cooldown`` is the pool-wide pause after a 429 that names no wait.
    ``transport`` is for tests (``httpx.MockTransport``); ``environ`` defaults to ``os.environ``.

    >>> service = OpenAICompatibleLLMService(provider="ollama")
    >>> service.base_url, service.model, service.api_key_source
    ('http://localhost:11434/v1', 'qwen2.5:7b', None)
    """

    any_event_loop = False  # one pooled client, bound to the loop it runs on

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        *,
        provider: str | Provider | None = None,
        api_key_env: str | None = None,
        timeout: float = 60.0,
        json_mode: bool | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        max_hospitals: int = 100,
        rate_limit_cooldown: float = 1.0,
        transport: httpx.AsyncBaseTransport | None = None,
        environ: Mapping[str, str] | None = None,
        divisions: Divisions | None = None,
    ) -> None:
        if isinstance(provider, str):
            preset: Provider | None = get_provider(provider)
        elif provider is None and base_url is None:
            preset = get_provider("openai")
        else:
            preset = provider
        url = (base_url or (preset.base_url if preset else "")).strip().rstrip("/")
        try:
            parsed = httpx.URL(url) if url else None
        except httpx.InvalidURL:
            parsed = None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(
                f"base URL {base_url!r} is not an http(s) URL such as http://localhost:8000/v1"
            )
        self.provider = preset.name if preset else None
        self.label = preset.label if preset else url
        self.base_url = url
        chosen = model or (preset.model if preset else None)
        if not chosen:
            raise ValueError(
                f"no model given for {self.label}: name the model the server serves (--model NAME)"
            )
        self.model = chosen
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens!r}")
        if max_hospitals < 1:
            raise ValueError(f"max_hospitals must be >= 1, got {max_hospitals!r}")
        if not rate_limit_cooldown >= 0:
            raise ValueError(f"rate_limit_cooldown must be >= 0, got {rate_limit_cooldown!r}")
        self.timeout = float(timeout)
        self._json_auto = json_mode is None
        if json_mode is None:
            json_mode = preset.json_mode if preset else True
        self.json_mode = json_mode
        self.temperature = (
            temperature if temperature is not None else (preset.temperature if preset else 0.0)
        )
        self.max_tokens = max_tokens
        self.max_hospitals = max_hospitals
        self.rate_limit_cooldown = float(rate_limit_cooldown)
        self.divisions = divisions or Divisions.load()
        self._url = f"{url}/chat/completions"
        self._host = parsed.host
        self._transport = transport

        env = os.environ if environ is None else environ
        candidates = [API_KEY_ENV]
        own = api_key_env or (preset.api_key_env if preset else None)
        if own and own != API_KEY_ENV:
            candidates.append(own)
        self.api_key_source: str | None = None
        key = ""
        for name in candidates:
            value = env.get(name, "").strip()
            if value:
                key, self.api_key_source = _check_key(value, name), name
                break
        if not key and (api_key_env or (preset is not None and preset.key_required)):
            raise ValueError(
                f"no API key for {self.label}: set {' or '.join(candidates)} in the environment"
            )
        self.__key = key
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._not_before = 0.0

    def __repr__(self) -> str:
        key = f"<from ${self.api_key_source}>" if self.api_key_source else None
        return (
            f"OpenAICompatibleLLMService(provider={self.provider!r}, base_url={self.base_url!r}, "
            f"model={self.model!r}, api_key={key}, json_mode={self.json_mode!r})"
        )

    # --- the guide's four methods --------------------------------------------------------------

    async def get_provinces(self) -> list[str]:
        return await self._ask("province", ())

    async def get_cities(self, province: str) -> list[str]:
        return await self._ask("city", province)

    async def get_districts(self, city: str) -> list[str]:
        return await self._ask("district", city)

    async def get_hospitals(self, district: str) -> list[str]:
        return await self._ask("hospital", district)

    # --- the shared cooldown -------------------------------------------------------------------

    @property
    def cooldown_remaining(self) -> float:
        """Seconds until calls may be sent again after a 429 (0.0 when they may now)."""
        return max(0.0, self._not_before - time.monotonic())

    def _cool_down(self, seconds: float) -> None:
        self._not_before = max(self._not_before, time.monotonic() + seconds)

    async def _wait_for_cooldown(self) -> None:
        while (wait := self._not_before - time.monotonic()) > 0:
            await asyncio.sleep(wait)

    # --- one call ------------------------------------------------------------------------------

    def _client_for(self, loop: asyncio.AbstractEventLoop) -> httpx.AsyncClient:
        if self._client is None:
            headers = {"Accept": "application/json", "User-Agent": "hospital-refresh"}
            if self.__key:
                headers["Authorization"] = f"Bearer {self.__key}"
            self._client = httpx.AsyncClient(
                headers=headers,
                timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
                transport=self._transport,
                verify=_tls_context(),
                trust_env=self._transport is None,
            )
            self._client_loop = loop
        elif self._client_loop is not loop:
            raise RuntimeError(
                "OpenAICompatibleLLMService was called from a second event loop; its pooled "
                "client belongs to the first (run every call on one loop)"
            )
        return self._client

    async def aclose(self) -> None:
        """Close the pooled client (idempotent); a later call opens a new one."""
        client, self._client, self._client_loop = self._client, None, None
        if client is not None:
            await client.aclose()

    async def _ask(self, level: str, node: str | tuple[()]) -> Names:
        if isinstance(node, Place):
            path, adcode, placed = node.path, node.adcode, True
        elif node == ():
            path, adcode, placed = (), None, True
        else:  # a bare name from a direct caller: all the prompt can say is the name
            path, adcode, placed = (str(node),), None, False
        messages = build_messages(
            level,
            path,
            adcode=adcode,
            max_hospitals=self.max_hospitals,
            divisions=self.divisions,
            placed=placed,
        )
        return await self.complete(messages)

    async def complete(self, messages: list[dict[str, str]]) -> Names:
        """Send ``messages``; the list the answer holds, as ``Names`` with the call's usage."""
        loop = asyncio.get_running_loop()
        await self._wait_for_cooldown()
        client = self._client_for(loop)
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "stream": False,
        }
        if self.json_mode:
            body["response_format"] = {"type": "json_object"}
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        started = time.monotonic()
        try:
            response = await client.post(self._url, json=body)
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise PermanentLLMError(
                f"cannot reach {self._url}: {self._redact(str(exc))}; check the base URL"
            ) from None
        except httpx.TimeoutException as exc:
            raise LLMTimeout(
                f"no answer from {self._host} within {self.timeout:g} s ({type(exc).__name__})"
            ) from None
        except httpx.RequestError as exc:
            detail = self._redact(str(exc)) or "connection closed"
            raise LLMServerError(
                f"connection to {self._host} failed ({type(exc).__name__}: {detail})"
            ) from None
        elapsed = time.monotonic() - started
        self._check_status(response)
        names = self._read(response)
        log.debug(
            "LLM call answered",
            host=self._host,
            model=self.model,
            status=response.status_code,
            seconds=round(elapsed, 3),
            names=len(names),
            prompt_tokens=names.usage.prompt_tokens,
            completion_tokens=names.usage.completion_tokens,
        )
        return names

    def _redact(self, text: str) -> str:
        return text.replace(self.__key, "[redacted]") if self.__key else text

    def _says(self, response: httpx.Response) -> tuple[str, str]:
        """What the server said about an error, for people, and its error code (or "")."""
        code = ""
        try:
            data = response.json()
        except ValueError:
            message = response.text
        else:
            message = ""
            if isinstance(data, dict):
                error = data.get("error", data)
                if isinstance(error, dict):
                    message = str(error.get("message") or error.get("detail") or "")
                    code = str(error.get("code") or error.get("type") or "")
                elif isinstance(error, str):
                    message = error
            if not message:
                message = json.dumps(data, ensure_ascii=False)
        text = _excerpt(self._redact(message))
        return (f": the server says {text!r}" if text else ""), code

    def _check_status(self, response: httpx.Response) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        says, code = self._says(response)
        host = self._host
        if status == 429:
            if "insufficient_quota" in code:
                raise PermanentLLMError(f"quota exhausted (429 insufficient_quota) at {host}{says}")
            wait = retry_after_seconds(response.headers)
            pause = self.rate_limit_cooldown if wait is None else wait
            self._cool_down(pause)
            log.warning("LLM rate limit: every call pauses", host=host, pause_s=round(pause, 3))
            raise LLMRateLimited(
                f"rate limited (429) by {host}; every call pauses {pause:g} s{says}",
                retry_after=pause,
            )
        if status == 408:
            raise LLMTimeout(f"the server timed the request out (408) at {host}{says}")
        if status == 409 or status >= 500:
            exc = LLMServerError(f"server error ({status}) at {host}{says}")
            wait = retry_after_seconds(response.headers)
            if wait is not None:
                exc.retry_after = wait  # type: ignore[attr-defined]  # the pool reads it
            raise exc
        if status == 400 and self.json_mode and self._json_auto and _about_json_mode(says):
            self.json_mode = False
            log.warning("the server rejects response_format; asking for JSON in the prompt only")
            raise LLMServerError(
                f"bad request (400) at {host}: response_format is not supported; asking again "
                f"without it{says}"
            )
        source = f"${self.api_key_source}" if self.api_key_source else f"${API_KEY_ENV}"
        reasons = {
            400: f"bad request (400) rejected by {host}",
            401: (
                f"API key rejected (401) by {host}: check {source}"
                if self.api_key_source
                else f"the server wants an API key (401): set {source}"
            ),
            402: f"insufficient balance (402) at {host}: top up the account",
            403: f"access denied (403) by {host}: the key may not be allowed model {self.model!r}",
            404: (
                f"not found (404): {self._url}; check the base URL (it usually ends in /v1) "
                f"and the model name {self.model!r}"
            ),
            422: f"request rejected as invalid (422) by {host}",
        }
        if 300 <= status < 400:
            where = response.headers.get("location", "elsewhere")
            reason = f"unexpected redirect ({status}) to {where}: check the base URL"
        else:
            reason = reasons.get(status, f"request refused ({status}) by {host}")
        raise PermanentLLMError(f"{reason}{says}")

    def _read(self, response: httpx.Response) -> Names:
        try:
            data = response.json()
        except ValueError:
            raise LLMServerError(
                f"malformed response from {self._host}: "
                f"not JSON: {_excerpt(self._redact(response.text))}"
            ) from None
        usage = Usage.from_response(data.get("usage") if isinstance(data, dict) else None)
        try:
            return self._answer_of(data, usage)
        except LLMError as exc:
            exc.usage = usage  # an answer the model gave, however bad, was paid for
            raise

    def _answer_of(self, data: Any, usage: Usage) -> Names:
        """The list a parsed chat-completions body holds, or the error that says why not."""
        host = self._host
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            says = _excerpt(self._redact(json.dumps(data, ensure_ascii=False)))
            raise LLMServerError(f"malformed response from {host}: no choices in {says}")
        choice = choices[0]
        finish = choice.get("finish_reason")
        if finish == "length":
            raise LLMMalformedOutput(
                "the answer was cut off (finish_reason: length): the list is longer than the "
                "model's output limit"
            )
        if finish == "content_filter":
            raise PermanentLLMError(f"{host}'s content filter withheld the answer")
        if finish == "insufficient_system_resource":
            raise LLMServerError(f"{host} ran out of resources mid-answer")
        message = choice.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # content parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if not isinstance(content, str) or not content.strip():
            raise LLMMalformedOutput(f"the LLM gave a blank answer (finish_reason: {finish})")
        return Names(parse_items(content), usage)
