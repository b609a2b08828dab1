"""Presets for the chat-completions servers people use: where they are, which model, which key.

Each preset gives a base URL (``--base-url`` overrides it), a default model (``--model``
overrides it), the environment variable that usually holds its API key, and its quirks:

========  =================================================  ==============  =================
preset    base URL                                           default model   API key variable
========  =================================================  ==============  =================
deepseek  https://api.deepseek.com/v1                        deepseek-chat   DEEPSEEK_API_KEY
qwen      https://dashscope.aliyuncs.com/compatible-mode/v1  qwen-plus       DASHSCOPE_API_KEY
moonshot  https://api.moonshot.cn/v1                         moonshot-v1-8k  MOONSHOT_API_KEY
zhipu     https://open.bigmodel.cn/api/paas/v4               glm-4-flash     ZHIPUAI_API_KEY
openai    https://api.openai.com/v1                          gpt-4o-mini     OPENAI_API_KEY
ollama    http://localhost:11434/v1                          qwen2.5:7b      (none)
vllm      http://localhost:8000/v1                           (give --model)  (none)
llamacpp  http://localhost:8080/v1                           local           (none)
========  =================================================  ==============  =================

``HOSPITAL_REFRESH_API_KEY``, when set, wins over the preset's variable. Quirks: Zhipu rejects
``temperature: 0`` (its range is open at 0), so its preset asks for 0.01; llama.cpp's server
has honoured ``response_format`` unevenly across versions (and LM Studio, on the same port
convention, rejects ``json_object``), so its preset asks for JSON in the prompt only.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PROVIDERS", "Provider", "get_provider"]


@dataclass(frozen=True, slots=True)
class Provider:
    """One chat-completions server's defaults and quirks."""

    name: str
    label: str
    base_url: str
    model: str | None
    """Default model; None means the user must name one (vLLM serves whatever it loaded)."""
    api_key_env: str | None
    """The variable that usually holds the key; None for a local server that needs none."""
    key_required: bool = True
    json_mode: bool = True
    """Send ``response_format: {"type": "json_object"}``."""
    temperature: float = 0.0


PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        Provider(
            "deepseek",
            "DeepSeek",
            "https://api.deepseek.com/v1",
            "deepseek-chat",
            "DEEPSEEK_API_KEY",
        ),
        Provider(
            "qwen",
            "Qwen (DashScope compatible mode)",
            "https://dashscope.aliyuncs.com/compatible-mode/v1",
            "qwen-plus",
            "DASHSCOPE_API_KEY",
        ),
        Provider(
            "moonshot",
            "Moonshot (Kimi)",
            "https://api.moonshot.cn/v1",
            "moonshot-v1-8k",
            "MOONSHOT_API_KEY",
        ),
        Provider(
            "zhipu",
            "Zhipu (GLM)",
            "https://open.bigmodel.cn/api/paas/v4",
            "glm-4-flash",
            "ZHIPUAI_API_KEY",
            temperature=0.01,
        ),
        Provider("openai", "OpenAI", "https://api.openai.com/v1", "gpt-4o-mini", "OPENAI_API_KEY"),
        Provider(
            "ollama", "Ollama", "http://localhost:11434/v1", "qwen2.5:7b", None, key_required=False
        ),
        Provider("vllm", "vLLM", "http://localhost:8000/v1", None, None, key_required=False),
        Provider(
            "llamacpp",
            "llama.cpp server",
            "http://localhost:8080/v1",
            "local",
            None,
            key_required=False,
            json_mode=False,
        ),
    )
}


def get_provider(name: str) -> Provider:
    """The preset called ``name`` (case-insensitive); ValueError naming the choices otherwise."""
    found = PROVIDERS.get(name.strip().lower())
    if found is None:
        raise ValueError(f"unknown LLM provider {name!r}; choose one of {', '.join(PROVIDERS)}")
    return found
