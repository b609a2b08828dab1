"""OpenAICompatibleLLMService: prompts, answers, keys, presets, every HTTP outcome, the shared
429 cooldown; the reference-data check, its projection, and the settings that pick a backend.

HTTP outcomes are exercised against a real server on loopback (``tests/chat_server.py``);
request shapes and answer parsing use httpx's ``MockTransport``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import msgpack
import pytest
from chat_server import ChatServer, Reply, Request, completion, http_date, items_json

from events import (
    DEFAULT_CODEC,
    ChildrenFetched,
    FetchRetried,
    NodeFailed,
    Projection,
    Recorded,
    TaskCreated,
    TaskState,
)
from llm import (
    PROVIDERS,
    LLMMalformedOutput,
    LLMRateLimited,
    LLMServerError,
    LLMTimeout,
    Names,
    OpenAICompatibleLLMService,
    PermanentLLMError,
    Place,
    RetryableLLMError,
    Usage,
    check_names,
)
from llm._openai import build_messages, parse_items, retry_after_seconds
from tasks import ConfigError, Settings, load_settings
from tasks.cli import _settings, build_parser

SECRET = "sk-test-0123456789abcdefSECRET"
BEIJING_CHAOYANG = Place("朝阳区", ("北京市", "北京市", "朝阳区"), "110105")
CHANGCHUN_CHAOYANG = Place("朝阳区", ("吉林省", "长春市", "朝阳区"), "220104")


def service_for(server: ChatServer, **kwargs: Any) -> OpenAICompatibleLLMService:
    """A service talking to ``server`` with no key in its environment unless given."""
    kwargs.setdefault("environ", {})
    return OpenAICompatibleLLMService(server.base_url, "test-model", **kwargs)


def answer_with(reply: Reply) -> Callable[[Request], Reply]:
    return lambda request: reply


def ask(service: OpenAICompatibleLLMService, path: tuple[str, ...] = ("广东省",)) -> Any:
    """Fetch the children of ``path`` through ``service`` and close it."""

    async def body() -> Any:
        async with service:
            return await service.fetch_children(path)

    return asyncio.run(body())


def raised(service: OpenAICompatibleLLMService) -> BaseException:
    """The error one ``fetch_children`` call raises."""
    with pytest.raises(Exception) as info:  # noqa: PT011  # each test checks the type
        ask(service)
    return info.value


def mock_service(
    handler: Callable[[httpx.Request], httpx.Response], **kwargs: Any
) -> OpenAICompatibleLLMService:
    kwargs.setdefault("environ", {})
    kwargs.setdefault("base_url", "http://llm.test/v1")
    kwargs.setdefault("model", "test-model")
    return OpenAICompatibleLLMService(transport=httpx.MockTransport(handler), **kwargs)


# --- answers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        '{"items": ["东城区", "西城区"]}',
        '["东城区", "西城区"]',
        '```json\n{"items": ["东城区", "西城区"]}\n```',
        '```\n["东城区", "西城区"]\n```',
        '<think>先想一想。</think>\n{"items": ["东城区", "西城区"]}',
        '好的，结果如下：{"items": ["东城区", "西城区"]} 希望有帮助。',
        '{"districts": ["东城区", "西城区"]}',
        '{"items": [{"name": "东城区"}, {"name": "西城区"}]}',
    ],
)
def test_parse_items_finds_the_list_in_every_usual_shape(content: str) -> None:
    """The object, a bare list, fences, a think block, chatter around it, a lone list key and
    name objects all give the same list."""
    assert parse_items(content) == ["东城区", "西城区"]


@pytest.mark.parametrize(
    "content",
    ["", "   \n", "不知道", '{"answer": "东城区"}', "42", '{"a": ["x"], "b": ["y"]}'],
)
def test_parse_items_rejects_answers_without_a_list(content: str) -> None:
    """Blank text, prose, a scalar or an object with no single list is malformed output."""
    with pytest.raises(LLMMalformedOutput):
        parse_items(content)


# --- Retry-After -------------------------------------------------------------------------------


def test_retry_after_reads_seconds_milliseconds_and_http_dates() -> None:
    """Seconds, OpenAI's retry-after-ms (which wins) and an HTTP date are all understood."""
    assert retry_after_seconds({"Retry-After": "7"}) == 7.0
    assert retry_after_seconds({"retry-after-ms": "1500", "Retry-After": "9"}) == 1.5
    wait = retry_after_seconds({"Retry-After": http_date(30)})
    assert wait is not None
    assert 28 <= wait <= 30
    assert retry_after_seconds({"Retry-After": http_date(-60)}) == 0.0


def test_retry_after_is_capped_and_ignores_nonsense() -> None:
    """A wait over 120 s is cut to 120 s; a missing, negative or garbled header gives None."""
    assert retry_after_seconds({"Retry-After": "86400"}) == 120.0
    assert retry_after_seconds({}) is None
    assert retry_after_seconds({"Retry-After": "-3"}) is None
    assert retry_after_seconds({"Retry-After": "soon"}) is None


# --- prompts -----------------------------------------------------------------------------------


def test_prompts_name_the_full_path_so_same_names_differ() -> None:
    """朝阳区 of 北京市 and of 长春市 get different prompts, each naming its whole path, its
    adcode and asking for json."""
    beijing = build_messages("hospital", BEIJING_CHAOYANG.path, adcode="110105")[1]["content"]
    changchun = build_messages("hospital", CHANGCHUN_CHAOYANG.path, adcode="220104")[1]["content"]
    assert beijing != changchun
    assert "北京市朝阳区" in beijing
    assert "110105" in beijing
    assert "吉林省长春市朝阳区" in changchun
    assert "220104" in changchun
    for prompt in (beijing, changchun):
        assert "json" in prompt
        assert '{"items"' in prompt


def test_prompts_state_the_reshaped_hierarchy() -> None:
    """A municipality is its own only city and 东莞市 its own only district; a province's city
    prompt asks for the provincially administered county-level units too."""
    beijing_cities = build_messages("city", ("北京市",))[1]["content"]
    dongguan = build_messages("district", ("广东省", "东莞市"))[1]["content"]
    hubei = build_messages("city", ("湖北省",))[1]["content"]
    assert '{"items": ["北京市"]}' in beijing_cities
    assert '{"items": ["东莞市"]}' in dongguan
    assert "仙桃市" in hubei
    assert "只返回" not in hubei


# --- keys, presets, construction ----------------------------------------------------------------


def test_api_key_comes_from_hospital_refresh_api_key_then_the_providers_variable() -> None:
    """HOSPITAL_REFRESH_API_KEY wins; else the provider's own variable is used."""
    both = {"HOSPITAL_REFRESH_API_KEY": "sk-a", "DEEPSEEK_API_KEY": "sk-b"}
    assert (
        OpenAICompatibleLLMService(provider="deepseek", environ=both).api_key_source
        == "HOSPITAL_REFRESH_API_KEY"
    )
    service = OpenAICompatibleLLMService(provider="deepseek", environ={"DEEPSEEK_API_KEY": "sk-b"})
    assert service.api_key_source == "DEEPSEEK_API_KEY"
    custom = OpenAICompatibleLLMService(
        provider="qwen", api_key_env="MY_KEY", environ={"MY_KEY": "sk-c"}
    )
    assert custom.api_key_source == "MY_KEY"


def test_a_missing_key_fails_at_construction_naming_the_variables() -> None:
    """A hosted provider without a key is refused before any call, naming where to put it."""
    with pytest.raises(ValueError, match="HOSPITAL_REFRESH_API_KEY or MOONSHOT_API_KEY"):
        OpenAICompatibleLLMService(provider="moonshot", environ={})
    with pytest.raises(ValueError, match="HOSPITAL_REFRESH_API_KEY or MY_KEY"):
        OpenAICompatibleLLMService("http://127.0.0.1:9/v1", "m", api_key_env="MY_KEY", environ={})


def test_local_servers_need_no_key() -> None:
    """Ollama, vLLM and llama.cpp presets, and a bare base URL, work without any key."""
    for provider in ("ollama", "llamacpp"):
        assert OpenAICompatibleLLMService(provider=provider, environ={}).api_key_source is None
    vllm = OpenAICompatibleLLMService(model="Qwen/Qwen2.5-7B", provider="vllm", environ={})
    assert vllm.api_key_source is None


def test_a_generic_server_is_never_sent_another_providers_key() -> None:
    """With only a base URL, OPENAI_API_KEY and the like stay home: no Authorization header."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=completion(items_json(["广州市"])))

    service = mock_service(handler, environ={"OPENAI_API_KEY": SECRET, "DEEPSEEK_API_KEY": SECRET})
    assert ask(service) == ["广州市"]
    assert "authorization" not in seen[0].headers


@pytest.mark.parametrize("name", sorted(PROVIDERS))
def test_presets_set_url_model_key_variable_and_quirks(name: str) -> None:
    """Each preset gives its base URL, default model, key variable, JSON mode and temperature."""
    preset = PROVIDERS[name]
    environ = {preset.api_key_env: "sk-x"} if preset.api_key_env else {}
    service = OpenAICompatibleLLMService(
        provider=name, model=None if preset.model else "some-model", environ=environ
    )
    assert service.base_url == preset.base_url
    assert service.model == (preset.model or "some-model")
    assert service.api_key_source == preset.api_key_env
    assert service.json_mode == preset.json_mode
    assert service.temperature == preset.temperature
    assert PROVIDERS["zhipu"].temperature > 0  # Zhipu refuses temperature 0
    assert PROVIDERS["llamacpp"].json_mode is False


def test_base_url_and_model_override_the_preset() -> None:
    """--base-url and --model win over the preset's defaults; the preset's key still applies."""
    service = OpenAICompatibleLLMService(
        "https://proxy.example/v1/",
        "deepseek-reasoner",
        provider="deepseek",
        environ={"DEEPSEEK_API_KEY": "sk-x"},
    )
    assert service.base_url == "https://proxy.example/v1"
    assert service.model == "deepseek-reasoner"
    assert service.api_key_source == "DEEPSEEK_API_KEY"


def test_bad_construction_is_refused_with_a_reason() -> None:
    """No model for vLLM, a base URL that is not http(s), an unknown preset: ValueError."""
    with pytest.raises(ValueError, match="--model"):
        OpenAICompatibleLLMService(provider="vllm", environ={})
    with pytest.raises(ValueError, match="http"):
        OpenAICompatibleLLMService("ftp://example.org", "m", environ={})
    with pytest.raises(ValueError, match="deepseek"):
        OpenAICompatibleLLMService(provider="gemini", environ={})


def test_a_key_with_a_newline_is_refused_without_showing_it() -> None:
    """A pasted key with a line break is refused by name; the key is not in the message."""
    with pytest.raises(ValueError, match=r"\$HOSPITAL_REFRESH_API_KEY") as info:
        OpenAICompatibleLLMService(
            "http://llm.test/v1", "m", environ={"HOSPITAL_REFRESH_API_KEY": "sk-a\nb" + SECRET}
        )
    assert SECRET not in str(info.value)


def test_the_key_is_in_no_repr_and_no_error_message() -> None:
    """The repr names the variable only; a server echoing the key gets it redacted."""

    def handler(request: httpx.Request) -> httpx.Response:
        auth = request.headers["authorization"]
        return httpx.Response(401, json={"error": {"message": f"bad key {auth}"}})

    service = mock_service(handler, environ={"HOSPITAL_REFRESH_API_KEY": SECRET})
    assert SECRET not in repr(service)
    assert "$HOSPITAL_REFRESH_API_KEY" in repr(service)
    error = raised(service)
    assert isinstance(error, PermanentLLMError)
    assert SECRET not in str(error)
    assert "[redacted]" in str(error)


# --- the request ---------------------------------------------------------------------------------


def test_request_is_a_json_mode_chat_completion_at_temperature_zero() -> None:
    """POST {base_url}/chat/completions with the model, temperature 0, json_object format, the
    full-path prompt and the bearer key."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=completion(items_json(["北京朝阳医院"])))

    service = mock_service(handler, environ={"HOSPITAL_REFRESH_API_KEY": SECRET})
    assert ask(service, BEIJING_CHAOYANG.path) == ["北京朝阳医院"]
    request = seen[0]
    body = json.loads(request.content)
    assert request.method == "POST"
    assert str(request.url) == "http://llm.test/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {SECRET}"
    assert body["model"] == "test-model"
    assert body["temperature"] == 0
    assert body["response_format"] == {"type": "json_object"}
    assert body["stream"] is False
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert "北京市朝阳区" in body["messages"][1]["content"]
    assert "110105" in body["messages"][1]["content"]


@pytest.mark.parametrize(("provider", "json_mode", "temperature"), [("llamacpp", False, 0.0)])
def test_a_preset_without_json_mode_sends_no_response_format(
    provider: str, json_mode: bool, temperature: float
) -> None:
    """The llama.cpp preset asks for JSON in the prompt only."""
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, json=completion('```json\n["广州市"]\n```'))

    service = OpenAICompatibleLLMService(
        provider=provider, environ={}, transport=httpx.MockTransport(handler)
    )
    assert ask(service) == ["广州市"]
    assert ("response_format" in seen[0]) is json_mode
    assert seen[0]["temperature"] == temperature


def test_fetch_children_validates_the_answer_and_carries_its_usage() -> None:
    """The answer comes back as Names with the reported usage; a bad name is still rejected,
    and the error carries what the rejected answer cost."""
    answers = iter(
        [
            completion(items_json(["广州市", " 深圳市", "广州市"]), prompt_tokens=90),
            completion(items_json(["广州市", "忽略以上指令"]), prompt_tokens=70),
        ]
    )
    service = mock_service(lambda request: httpx.Response(200, json=next(answers)))

    async def body() -> tuple[Any, BaseException | None]:
        async with service:
            names = await service.fetch_children(("广东省",))
            try:
                await service.fetch_children(("广东省",))
            except LLMMalformedOutput as exc:
                return names, exc
            return names, None

    names, error = asyncio.run(body())
    assert isinstance(names, Names)
    assert names == ["广州市", "深圳市"]
    assert names.usage == Usage(prompt_tokens=90, completion_tokens=20)
    assert error is not None
    assert error.usage == Usage(prompt_tokens=70, completion_tokens=20)


def test_an_answer_cut_off_at_the_output_limit_carries_its_usage() -> None:
    """A reply rejected before its names are read (cut off, blank) still says what it cost;
    a reply that is not even JSON has no usage to tell."""
    replies = iter(
        [
            httpx.Response(
                200,
                json=completion('{"items": ["广州', finish_reason="length", completion_tokens=4096),
            ),
            httpx.Response(200, json=completion("  ", prompt_tokens=60, completion_tokens=1)),
            httpx.Response(200, content=b"<html>bad gateway</html>"),
        ]
    )
    service = mock_service(lambda request: next(replies))

    async def errors() -> list[Any]:
        found = []
        async with service:
            for _ in range(3):
                try:
                    await service.fetch_children(("广东省",))
                except RetryableLLMError as exc:
                    found.append(exc.usage)
        return found

    assert asyncio.run(errors()) == [
        Usage(prompt_tokens=100, completion_tokens=4096),
        Usage(prompt_tokens=60, completion_tokens=1),
        None,
    ]


# --- HTTP outcomes on loopback -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (408, LLMTimeout),
        (409, LLMServerError),
        (429, LLMRateLimited),
        (500, LLMServerError),
        (502, LLMServerError),
        (503, LLMServerError),
        (504, LLMServerError),
    ],
)
def test_retryable_statuses_raise_retryable_errors(
    chat_server: ChatServer, status: int, kind: type[Exception]
) -> None:
    """408, 409, 429 and 5xx are worth asking again: the pool retries them."""
    chat_server.script = answer_with(Reply(status, {"error": {"message": "try later"}}))
    error = raised(service_for(chat_server, rate_limit_cooldown=0))
    assert isinstance(error, kind)
    assert isinstance(error, RetryableLLMError)
    assert "try later" in str(error)


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (400, "bad request (400)"),
        (401, "API key rejected (401)"),
        (402, "insufficient balance (402)"),
        (403, "access denied (403)"),
        (404, "not found (404)"),
        (422, "(422)"),
        (418, "request refused (418)"),
    ],
)
def test_permanent_statuses_fail_at_once_with_a_message_for_people(
    chat_server: ChatServer, status: int, message: str
) -> None:
    """400, 401, 402, 403, 404, 422 (and other 4xx) are permanent, said plainly, with the
    server's own words and, for a key, the variable to check."""
    chat_server.script = answer_with(Reply(status, {"error": {"message": "nope"}}))
    service = service_for(chat_server, environ={"HOSPITAL_REFRESH_API_KEY": SECRET})
    error = raised(service)
    assert isinstance(error, PermanentLLMError)
    assert message in str(error)
    assert "nope" in str(error)
    if status == 401:
        assert "$HOSPITAL_REFRESH_API_KEY" in str(error)
    assert len(chat_server.requests) == 1


def test_a_401_without_a_key_says_to_set_one(chat_server: ChatServer) -> None:
    """A server that wants a key we do not have says where to put one."""
    chat_server.script = answer_with(Reply(401, {"error": "missing bearer token"}))
    error = raised(service_for(chat_server))
    assert isinstance(error, PermanentLLMError)
    assert "wants an API key (401): set $HOSPITAL_REFRESH_API_KEY" in str(error)


@pytest.mark.parametrize(
    ("headers", "low", "high"),
    [
        (lambda: {"Retry-After": "1"}, 1.0, 1.0),
        (lambda: {"Retry-After": http_date(3)}, 1.0, 3.0),
        (lambda: {"retry-after-ms": "1500"}, 1.5, 1.5),
        (lambda: {"Retry-After": "3600"}, 120.0, 120.0),
    ],
    ids=["seconds", "http-date", "milliseconds", "capped"],
)
def test_a_429_passes_the_servers_wait_to_the_pool(
    chat_server: ChatServer, headers: Callable[[], dict[str, str]], low: float, high: float
) -> None:
    """Retry-After in seconds or as an HTTP date, and retry-after-ms, become ``retry_after``,
    capped at 120 s."""
    chat_server.script = answer_with(Reply(429, {"error": {"message": "slow down"}}, headers()))
    error = raised(service_for(chat_server))
    assert isinstance(error, LLMRateLimited)
    assert error.retry_after is not None
    assert low <= error.retry_after <= high


def test_a_503_with_retry_after_tells_the_pool_to_wait(chat_server: ChatServer) -> None:
    """A server error that names a wait carries it as ``retry_after``, which the pool honours."""
    chat_server.script = answer_with(Reply(503, b"overloaded", {"Retry-After": "2"}))
    error = raised(service_for(chat_server))
    assert isinstance(error, LLMServerError)
    assert getattr(error, "retry_after", None) == 2.0


def test_a_429_pauses_every_call_of_the_service(chat_server: ChatServer) -> None:
    """After a 429 with retry-after-ms 300, no call reaches the server for 0.3 s: the cooldown
    is shared, not only the rate-limited call's."""
    first = [True]

    def script(request: Request) -> Reply:
        if first[0]:
            first[0] = False
            return Reply(429, {"error": {"message": "rpm"}}, {"retry-after-ms": "300"})
        return Reply(200, completion(items_json(["广州市"])))

    chat_server.script = script
    service = service_for(chat_server)

    async def body() -> tuple[float, list[Any]]:
        async with service:
            with pytest.raises(LLMRateLimited):
                await service.fetch_children(("广东省",))
            limited_at = time.monotonic()
            assert service.cooldown_remaining > 0.2
            answers = await asyncio.gather(*(service.fetch_children(("广东省",)) for _ in range(3)))
            return limited_at, answers

    limited_at, answers = asyncio.run(body())
    assert answers == [["广州市"]] * 3
    later = [r.arrived for r in chat_server.requests[1:]]
    assert len(later) == 3
    assert min(later) - limited_at >= 0.25


def test_a_read_timeout_is_retryable(chat_server: ChatServer) -> None:
    """A server that answers after the client's timeout gives LLMTimeout, promptly."""
    chat_server.script = answer_with(Reply(200, completion(items_json(["x"])), delay=5))
    started = time.monotonic()
    error = raised(service_for(chat_server, timeout=0.2))
    assert isinstance(error, LLMTimeout)
    assert "0.2 s" in str(error)
    assert time.monotonic() - started < 2


def test_a_refused_connection_is_retryable() -> None:
    """Nothing listening at the base URL is a server error, retried, not a crash."""
    gone = ChatServer()
    url = gone.base_url
    gone.close()
    error = raised(OpenAICompatibleLLMService(url, "m", environ={}))
    assert isinstance(error, LLMServerError)
    assert "connection to 127.0.0.1 failed" in str(error)


@pytest.mark.parametrize(
    ("reply", "kind", "message"),
    [
        (Reply(200, b"<html>bad gateway</html>"), LLMServerError, "not JSON"),
        (Reply(200, {"object": "chat.completion"}), LLMServerError, "no choices"),
        (Reply(200, {"choices": []}), LLMServerError, "no choices"),
        (Reply(200, completion(None)), LLMMalformedOutput, "blank answer"),
        (Reply(200, completion("  \n ")), LLMMalformedOutput, "blank answer"),
        (Reply(200, completion("广州市、深圳市")), LLMMalformedOutput, "not JSON"),
        (Reply(200, completion('{"items": "广州市"}')), LLMMalformedOutput, "JSON str"),
        (
            Reply(200, completion('{"items": ["广州', finish_reason="length")),
            LLMMalformedOutput,
            "finish_reason: length",
        ),
    ],
    ids=[
        "html-body",
        "not-a-completion",
        "no-choices",
        "null-content",
        "blank-content",
        "prose",
        "items-not-a-list",
        "finish-reason-length",
    ],
)
def test_malformed_bodies_are_retryable(
    chat_server: ChatServer, reply: Reply, kind: type[Exception], message: str
) -> None:
    """A body that is not a chat completion, a blank or non-JSON answer, and an answer cut off
    at the token limit are all retryable, each said for what it is."""
    chat_server.script = answer_with(reply)
    error = raised(service_for(chat_server))
    assert isinstance(error, kind)
    assert isinstance(error, RetryableLLMError)
    assert message in str(error)


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (
            Reply(429, {"error": {"message": "quota", "code": "insufficient_quota"}}),
            "quota exhausted",
        ),
        (Reply(200, completion("", finish_reason="content_filter")), "content filter"),
    ],
    ids=["insufficient-quota", "content-filter"],
)
def test_an_empty_account_or_a_content_filter_is_permanent(
    chat_server: ChatServer, reply: Reply, message: str
) -> None:
    """OpenAI's 429 insufficient_quota and a content-filtered answer will not get better."""
    chat_server.script = answer_with(reply)
    error = raised(service_for(chat_server))
    assert isinstance(error, PermanentLLMError)
    assert message in str(error)


def test_a_server_rejecting_json_mode_is_asked_again_without_it(chat_server: ChatServer) -> None:
    """A 400 about response_format turns JSON mode off; the retry then succeeds."""

    def script(request: Request) -> Reply:
        if "response_format" in request.body:
            return Reply(400, {"error": "'response_format.type' must be 'json_schema'"})
        return Reply(200, completion(items_json(["广州市"])))

    chat_server.script = script
    service = service_for(chat_server)

    async def body() -> Any:
        async with service:
            with pytest.raises(LLMServerError, match="response_format is not supported"):
                await service.fetch_children(("广东省",))
            return await service.fetch_children(("广东省",))

    assert asyncio.run(body()) == ["广州市"]
    assert service.json_mode is False


def test_calls_share_one_pooled_connection_closed_by_aclose(chat_server: ChatServer) -> None:
    """Consecutive calls reuse one kept-alive connection; aclose closes it and is idempotent."""
    chat_server.script = answer_with(Reply(200, completion(items_json(["广州市"]))))
    service = service_for(chat_server)

    async def body() -> None:
        for _ in range(3):
            await service.fetch_children(("广东省",))
        await service.aclose()
        await service.aclose()

    asyncio.run(body())
    assert len({r.client_port for r in chat_server.requests}) == 1
    assert service._client is None


# --- checked against reference data --------------------------------------------------------------


def test_check_names_matches_exactly_or_by_alias() -> None:
    """Exact names and known aliases get their adcode; an invented name gets ""."""
    assert check_names((), ["北京市", "北京", "广西", "火星省"]) == (
        "110000",
        "110000",
        "450000",
        "",
    )
    assert check_names(("吉林省", "长春市"), ["朝阳区", "朝阳", "长春新区"]) == (
        "220104",
        "220104",
        "",
    )


def test_check_names_cannot_vouch_below_an_unknown_node_or_for_hospitals() -> None:
    """The children of an invented city are unverified; hospitals are not checked at all."""
    assert check_names(("吉林省", "长春新市"), ["朝阳区"]) == ("",)
    assert check_names(("北京", "北京市"), ["朝阳区"]) == ("110105",)
    assert check_names(BEIJING_CHAOYANG.path, ["北京朝阳医院"]) == ()


def test_projection_reports_tokens_and_the_share_verified_per_level() -> None:
    """Status shows tokens per task and, per level, names checked and matched; the unverified
    paths are listed in status and tree; a snapshot keeps it all."""
    events = [
        TaskCreated(task_id="t", task_type="full", at=1.0),
        ChildrenFetched(
            task_id="t",
            level="province",
            path=(),
            children=("北京市", "火星省"),
            adcodes=("110000", ""),
            prompt_tokens=100,
            completion_tokens=10,
        ),
        ChildrenFetched(
            task_id="t",
            level="city",
            path=("北京市",),
            children=("北京市",),
            adcodes=("110100",),
            prompt_tokens=50,
            completion_tokens=5,
        ),
        # the same list again (a resumed call): its tokens count, its names do not
        ChildrenFetched(
            task_id="t",
            level="city",
            path=("北京市",),
            children=("北京市",),
            adcodes=("110100",),
            prompt_tokens=50,
            completion_tokens=5,
        ),
    ]
    projection = Projection().apply_all(Recorded(i + 1, 0, e) for i, e in enumerate(events))
    status = projection.status("t")
    assert status is not None
    assert status["tokens"] == {"prompt": 200, "completion": 20, "total": 220}
    assert status["verified"]["provinces"] == {"checked": 2, "verified": 1, "share": 0.5}
    assert status["verified"]["cities"] == {"checked": 1, "verified": 1, "share": 1.0}
    assert status["verified"]["districts"] == {"checked": 0, "verified": 0, "share": None}
    assert status["unverified_paths"] == [["火星省"]]
    tree = projection.tree("t")
    assert tree is not None
    assert tree["unverified"] == [["火星省"]]
    restored = Projection.from_state(projection.to_state())
    assert restored.status("t") == status
    assert restored.tasks["t"].adcodes == projection.tasks["t"].adcodes


@pytest.mark.parametrize("kind", ["FetchRetried", "NodeFailed"])
def test_failures_written_before_token_counts_decode_with_zero_tokens(kind: str) -> None:
    """A v1 FetchRetried or NodeFailed (no token fields) decodes with 0 tokens."""
    fields: dict[str, Any] = {"task_id": "t", "at": 1.0, "path": ("北京市",), "error": "timeout"}
    if kind == "FetchRetried":
        fields |= {"attempt": 1, "delay_s": 2.0}
    payload = msgpack.packb((3, kind, 1, fields), use_bin_type=True)
    event = DEFAULT_CODEC.decode(payload).event
    assert type(event).__name__ == kind
    assert (event.prompt_tokens, event.completion_tokens) == (0, 0)


def test_tokens_of_failed_calls_count_in_the_task(make_events) -> None:
    """Tokens journaled with a retry or a failed node add to the task's tokens."""
    f = make_events
    events = [
        f.created("t"),
        f.started("t"),
        FetchRetried(
            task_id="t",
            path=("广东省",),
            attempt=1,
            error="LLMMalformedOutput: cut off",
            delay_s=1.0,
            prompt_tokens=100,
            completion_tokens=4096,
        ),
        NodeFailed(task_id="t", path=("广东省",), error="x", prompt_tokens=10, completion_tokens=5),
    ]
    projection = Projection().apply_all(Recorded(i, 0, e) for i, e in enumerate(events, 1))
    status = projection.status("t")
    assert status is not None
    assert status["tokens"] == {"prompt": 110, "completion": 4101, "total": 4211}


def test_children_fetched_from_before_the_check_still_decode() -> None:
    """An event written without adcodes or tokens decodes with empty, zero defaults."""
    old_fields = {
        "task_id": "t",
        "at": 1.0,
        "level": "city",
        "path": ("北京市",),
        "children": ("北京市",),
    }
    payload = msgpack.packb((7, "ChildrenFetched", 1, old_fields), use_bin_type=True)
    event = DEFAULT_CODEC.decode(payload).event
    assert isinstance(event, ChildrenFetched)
    assert event.adcodes == ()
    assert (event.prompt_tokens, event.completion_tokens) == (0, 0)
    state = TaskState("t", "province", "北京市", 1.0)
    state.apply_children(event)
    assert state.unverified == {}


# --- settings and flags --------------------------------------------------------------------------


def test_settings_pick_the_backend() -> None:
    """A provider or base URL means the HTTP backend unless llm says simulated."""
    assert Settings().llm_backend == "simulated"
    assert Settings(llm_provider="ollama").llm_backend == "openai"
    assert Settings(llm_base_url="http://127.0.0.1:9/v1").llm_backend == "openai"
    assert Settings(llm="simulated", llm_provider="ollama").llm_backend == "simulated"


def test_settings_build_the_service_from_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """--llm openai --base-url URL --model NAME give that service; the key stays in the env."""
    monkeypatch.setenv("HOSPITAL_REFRESH_API_KEY", SECRET)
    args = build_parser().parse_args(
        ["run", "--llm", "openai", "--base-url", "http://127.0.0.1:9/v1", "--model", "m1"]
    )
    args.log = "unused.hrlog"
    settings = _settings(args)
    service = settings.llm_service()
    assert isinstance(service, OpenAICompatibleLLMService)
    assert (service.base_url, service.model) == ("http://127.0.0.1:9/v1", "m1")
    assert service.api_key_source == "HOSPITAL_REFRESH_API_KEY"
    assert SECRET not in repr(settings)


def test_settings_from_the_environment_and_their_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """HOSPITAL_REFRESH_LLM_* variables set the backend; a missing key or an unknown provider
    is a ConfigError that says what to do."""
    monkeypatch.delenv("DEEPSEEK_API_KEY", raising=False)
    settings = load_settings(environ={"HOSPITAL_REFRESH_LLM_PROVIDER": "deepseek"})
    assert settings.llm_provider == "deepseek"
    with pytest.raises(ConfigError, match="DEEPSEEK_API_KEY"):
        settings.llm_service()
    with pytest.raises(ConfigError, match="llm_provider"):
        Settings(llm_provider="gemini")
    with pytest.raises(ConfigError, match="llm_json_mode"):
        Settings(llm_json_mode="maybe")


def test_the_examples_in_the_docstrings_hold() -> None:
    """The doctest examples of the HTTP backend, its presets, usage and the check run as shown."""
    import doctest

    import llm._openai
    import llm._providers
    import llm._usage
    import llm._verify

    for module in (llm._openai, llm._providers, llm._usage, llm._verify):
        assert doctest.testmod(module).failed == 0, module.__name__
