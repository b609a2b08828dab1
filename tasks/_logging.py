"""structlog set-up: a console renderer on a terminal, JSON lines otherwise or on request.

Standard-library loggers (the store's, pykka's) go through the same processors, so every line
of the process looks alike and lands on stderr.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

LogFormat = Literal["auto", "console", "json"]
LOG_FORMATS: tuple[str, ...] = ("auto", "console", "json")


def configure_logging(level: str | int = "INFO", fmt: LogFormat = "auto") -> None:
    """Route structlog and stdlib logging to stderr at ``level`` in format ``fmt``."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(LOG_FORMATS)}")
    if isinstance(level, str):
        numeric = logging.getLevelName(level.upper())
        if not isinstance(numeric, int):
            raise ValueError(f"log level {level!r} is not one of DEBUG, INFO, WARNING, ERROR")
        level = numeric
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Dropping a disabled debug line first thing keeps the hot path cheap.
    chain: list[structlog.types.Processor] = [structlog.stdlib.filter_by_level, *shared]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*chain, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    final: list[structlog.types.Processor] = [
        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
    ]
    if use_json:
        final.append(structlog.processors.dict_tracebacks)
    final.append(renderer)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=final)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
