"""Library-friendly logging: structlog through the standard library, unless the host says otherwise.

An application that embeds the actor system keeps control of its logs: if it has not
configured structlog, our events go to stdlib ``logging`` (so by default only warnings and
errors reach stderr, and ``logging.basicConfig(level=logging.DEBUG)`` shows everything). The
command line configures structlog itself (``tasks._logging``) before anything logs.
"""

from __future__ import annotations

import structlog


def ensure_structlog() -> None:
    """Route structlog through stdlib logging if nobody has configured structlog yet."""
    if structlog.is_configured():
        return
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.KeyValueRenderer(
                key_order=["timestamp", "level", "logger", "event"]
            ),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
