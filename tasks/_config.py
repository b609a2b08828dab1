"""Settings from a TOML file, environment variables and command-line flags (flags win).

Order, lowest first: built-in defaults; the TOML file (``--config PATH``, else
``$HOSPITAL_REFRESH_CONFIG``, else ``./hospital-refresh.toml`` if present); environment variables
``HOSPITAL_REFRESH_<NAME>`` (e.g. ``HOSPITAL_REFRESH_CONCURRENCY=8``); command-line flags.

Example ``hospital-refresh.toml``::

    log_path = "/var/lib/hospital-refresh/events.hrlog"
    concurrency = 5
    max_retries = 3
    backoff_base = 1.0
    sim_latency_ms = [10, 50]
    sim_failure_rate = 0.0
    # A real LLM (the API key is never a setting: it is read from $HOSPITAL_REFRESH_API_KEY or
    # the provider's own variable, e.g. $DEEPSEEK_API_KEY):
    llm = "openai"              # "simulated" (the default) or "openai" (chat completions)
    llm_provider = "deepseek"   # a preset: deepseek qwen moonshot zhipu openai ollama vllm llamacpp
    llm_model = "deepseek-chat" # overrides the preset's model; llm_base_url overrides its URL
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors import RetryPolicy, SystemConfig
from llm import (
    FAILURE_KINDS,
    PROVIDERS,
    LLMService,
    OpenAICompatibleLLMService,
    SimulatedLLMService,
)
from store import FSYNC_POLICIES

from ._logging import LOG_FORMATS

ENV_PREFIX = "HOSPITAL_REFRESH_"
LOCAL_CONFIG = "hospital-refresh.toml"
LOG_LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARNING", "ERROR")
LLM_BACKENDS: tuple[str, ...] = ("simulated", "openai")
JSON_MODES: dict[str, bool | None] = {"auto": None, "on": True, "off": False}


class ConfigError(ValueError):
    """A setting has a value that is not allowed; the message says which and what is."""


def default_log_path() -> str:
    """``$HOSPITAL_REFRESH_LOG``, else ``$XDG_DATA_HOME/hospital-refresh/events.hrlog``."""
    explicit = os.environ.get(f"{ENV_PREFIX}LOG")
    if explicit:
        return explicit
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return os.path.join(data_home, "hospital-refresh", "events.hrlog")


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of a TaskManager and the command line, with its default."""

    log_path: str = field(default_factory=default_log_path)
    concurrency: int = 5
    max_retries: int = 3
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    backoff_jitter: float = 0.0
    call_timeout: float = 120.0
    fsync: str = "batch"
    snapshot_every: int = 20_000
    max_items: int = 500
    sim_latency_ms: tuple[float, float] = (10.0, 50.0)
    sim_failure_rate: float = 0.0
    sim_failure_kinds: tuple[str, ...] = FAILURE_KINDS
    seed: int | None = None
    log_level: str = "INFO"
    log_format: str = "auto"
    llm: str | None = None
    """"simulated" or "openai"; None: "openai" if a provider or base URL is set, else simulated."""
    llm_provider: str | None = None
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_api_key_env: str | None = None
    """Variable holding the API key instead of the provider's (never the key itself)."""
    llm_timeout: float = 60.0
    llm_json_mode: str = "auto"
    """"on"/"off" forces ``response_format: json_object``; "auto" follows the provider."""

    def __post_init__(self) -> None:
        if self.fsync not in FSYNC_POLICIES:
            raise ConfigError(f"fsync {self.fsync!r} is not one of {', '.join(FSYNC_POLICIES)}")
        if self.max_items < 1:
            raise ConfigError(f"max_items must be >= 1, got {self.max_items}")
        if self.snapshot_every < 1:
            raise ConfigError(f"snapshot_every must be >= 1, got {self.snapshot_every}")
        self._check_backoff()
        self._check_simulated()
        self._check_logging()
        self._check_llm()
        try:
            self.system_config()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def _check_backoff(self) -> None:
        # RetryPolicy checks these too, but its messages do not name the settings.
        for name in ("backoff_base", "backoff_cap"):
            if not getattr(self, name) >= 0:
                raise ConfigError(
                    f"{name} must be a number of seconds >= 0, got {getattr(self, name)!r}"
                )
        if not 0 <= self.backoff_jitter <= 1:
            raise ConfigError(
                f"backoff_jitter must be between 0 and 1, got {self.backoff_jitter!r}"
            )

    def _check_simulated(self) -> None:
        low, high = self.sim_latency_ms
        if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= high):
            raise ConfigError(
                f"sim_latency_ms {self.sim_latency_ms!r} must be MIN-MAX milliseconds with "
                "0 <= MIN <= MAX, e.g. '10-50' or '0-0'"
            )
        if not 0 <= self.sim_failure_rate <= 1:
            raise ConfigError(
                f"sim_failure_rate must be between 0 and 1, got {self.sim_failure_rate!r}"
            )
        unknown = [kind for kind in self.sim_failure_kinds if kind not in FAILURE_KINDS]
        if unknown or (self.sim_failure_rate > 0 and not self.sim_failure_kinds):
            raise ConfigError(
                f"sim_failure_kinds {list(self.sim_failure_kinds)!r} must name one or more of "
                f"{', '.join(FAILURE_KINDS)}"
            )

    def _check_logging(self) -> None:
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(
                f"log_format {self.log_format!r} is not one of {', '.join(LOG_FORMATS)}"
            )
        if not isinstance(logging.getLevelName(str(self.log_level).upper()), int):
            raise ConfigError(f"log_level {self.log_level!r} is not one of {', '.join(LOG_LEVELS)}")

    def retry_policy(self) -> RetryPolicy:
        """The retry policy these settings describe."""
        return RetryPolicy(
            max_retries=self.max_retries,
            base=self.backoff_base,
            cap=self.backoff_cap,
            jitter=self.backoff_jitter,
        )

    def system_config(self) -> SystemConfig:
        """The actor system's configuration."""
        return SystemConfig(
            concurrency=self.concurrency,
            retry=self.retry_policy(),
            call_timeout=self.call_timeout,
            fsync=self.fsync,  # type: ignore[arg-type]
            snapshot_every=self.snapshot_every,
            seed=self.seed,
        )

    def _check_llm(self) -> None:
        if self.llm not in (None, "", *LLM_BACKENDS):
            raise ConfigError(f"llm {self.llm!r} is not one of {', '.join(LLM_BACKENDS)}")
        if self.llm_provider and self.llm_provider.strip().lower() not in PROVIDERS:
            raise ConfigError(
                f"llm_provider {self.llm_provider!r} is not one of {', '.join(PROVIDERS)}"
            )
        if self.llm_json_mode not in JSON_MODES:
            raise ConfigError(
                f"llm_json_mode {self.llm_json_mode!r} is not one of {', '.join(JSON_MODES)}"
            )
        if not (self.llm_timeout > 0 and math.isfinite(self.llm_timeout)):
            raise ConfigError(f"llm_timeout must be > 0 seconds, got {self.llm_timeout!r}")

    @property
    def llm_backend(self) -> str:
        """The backend these settings pick: "simulated" or "openai"."""
        if self.llm:
            return self.llm
        return "openai" if self.llm_provider or self.llm_base_url else "simulated"

    def llm_service(self) -> LLMService:
        """The LLM backend these settings describe; ConfigError if it cannot be made (no API
        key in the environment, no model for a server that needs one named...)."""
        if self.llm_backend == "simulated":
            return self.simulated_service()
        try:
            service = OpenAICompatibleLLMService(
                base_url=self.llm_base_url or None,
                model=self.llm_model or None,
                provider=self.llm_provider or None,
                api_key_env=self.llm_api_key_env or None,
                timeout=self.llm_timeout,
                json_mode=JSON_MODES[self.llm_json_mode],
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        service.max_items = self.max_items
        return service

    def simulated_service(self) -> SimulatedLLMService:
        """The simulated LLM backend these settings describe."""
        service = SimulatedLLMService(
            latency_ms=self.sim_latency_ms,
            failure_rate=self.sim_failure_rate,
            failure_kinds=self.sim_failure_kinds,
            seed=self.seed if self.seed is not None else 0,
        )
        service.max_items = self.max_items
        return service

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (None values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(Settings)}


def parse_latency(text: str) -> tuple[float, float]:
    """``"10-50"`` (milliseconds) -> ``(10.0, 50.0)``; ``"0"`` -> ``(0.0, 0.0)``."""
    try:
        low, _, high = text.partition("-")
        pair = (float(low), float(high or low))
    except ValueError:
        raise ConfigError(
            f"latency {text!r} is not MIN-MAX in milliseconds, e.g. '10-50' or '0-0'"
        ) from None
    if pair[0] < 0 or pair[1] < pair[0]:
        raise ConfigError(f"latency {text!r} needs 0 <= MIN <= MAX")
    return pair


def _coerce(name: str, value: Any, source: str) -> Any:
    kind = str(FIELDS[name].type)
    try:
        if name == "sim_latency_ms":
            if isinstance(value, str):
                return parse_latency(value)
            low, high = value
            return (float(low), float(high))
        if name == "sim_failure_kinds":
            items = value.split(",") if isinstance(value, str) else value
            return tuple(str(v).strip() for v in items if str(v).strip())
        if kind.startswith("int"):
            if value in ("", "none", "None") and "None" in kind:
                return None
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind.startswith("float"):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return str(value)
    except ConfigError as exc:  # a ValueError that already says what is allowed
        raise ConfigError(f"{source}: {name}: {exc}") from None
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {name} = {value!r} is not a valid {kind}") from None


def from_mapping(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Validate and convert settings read from ``source``; unknown keys are an error."""
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ConfigError(
            f"{source}: unknown setting(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(FIELDS))}"
        )
    return {name: _coerce(name, value, source) for name, value in data.items()}


def from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """Settings from ``HOSPITAL_REFRESH_<NAME>`` variables (``..._LOG`` is the log path)."""
    found: dict[str, Any] = {}
    for name in FIELDS:
        key = f"{ENV_PREFIX}{'LOG' if name == 'log_path' else name.upper()}"
        if key in environ:
            found[name] = _coerce(name, environ[key], f"environment variable {key}")
    return found


def load_settings(
    config_file: str | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge defaults, the TOML file, the environment and ``flags`` (None means not given)."""
    environ = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    path = config_file or environ.get(f"{ENV_PREFIX}CONFIG")
    if path is None and Path(LOCAL_CONFIG).is_file():
        path = LOCAL_CONFIG
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        merged.update(from_mapping(data, f"config file {path}"))
    merged.update(from_env(environ))
    merged.update({k: v for k, v in (flags or {}).items() if v is not None})
    return Settings(**merged)
