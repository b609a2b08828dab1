"""The ``/metrics`` page: the service's numbers in the Prometheus text exposition format 0.0.4.

Hand-written (no client library): every value comes from a read the service already makes, the
status view, the fetch pool's counters and the log's size, taken when the page is scraped.

>>> print(render_metrics({"RUNNING": 1}, {"calls": 3}, log_size=4096, log_events=12)[:60])
# HELP hospital_refresh_up 1 while the actor system is runnin
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from events import STATUSES

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The media type of the page (the Prometheus text format)."""

PREFIX = "hospital_refresh_"

# (metric, type, help, key in the pool's counters)
_POOL_METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("llm_calls_total", "counter", "LLM calls made since the process started", "calls"),
    ("llm_retries_total", "counter", "LLM calls retried after an error", "retries"),
    ("llm_failures_total", "counter", "nodes that still failed after their retries", "failures"),
    ("llm_calls_in_flight", "gauge", "LLM calls in flight now", "in_flight"),
    (
        "llm_calls_in_flight_peak",
        "gauge",
        "the most LLM calls ever in flight at once",
        "peak_in_flight",
    ),
    ("llm_calls_queued", "gauge", "LLM calls waiting for a free slot", "queued"),
    ("llm_calls_waiting_retry", "gauge", "LLM calls waiting out a retry backoff", "waiting_retry"),
)


def escape_label(value: str) -> str:
    """A label value as the text format writes it: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(name: str, kind: str, help_text: str, samples: Iterable[tuple[str, float]]) -> str:
    lines = [f"# HELP {PREFIX}{name} {help_text}", f"# TYPE {PREFIX}{name} {kind}"]
    lines += [f"{PREFIX}{name}{labels} {_number(value)}" for labels, value in samples]
    return "\n".join(lines)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def render_metrics(
    tasks_by_status: Mapping[str, int],
    pool: Mapping[str, Any] | None,
    *,
    log_size: int,
    log_events: int,
    up: bool = True,
    concurrency: int | None = None,
    running_progress: Mapping[str, int] | None = None,
) -> str:
    """The whole page. ``pool`` is ``TaskManager.pool_stats()`` (None if it did not answer: its
    metrics are then left out, never reported as zero); ``running_progress`` maps the id of each
    RUNNING task to its progress."""
    families = [
        _family("up", "gauge", "1 while the actor system is running, else 0", [("", int(up))]),
        _family(
            "tasks",
            "gauge",
            "tasks known to the status view, by status",
            [(f'{{status="{s}"}}', tasks_by_status.get(s, 0)) for s in STATUSES],
        ),
    ]
    if running_progress:
        families.append(
            _family(
                "task_progress_percent",
                "gauge",
                "progress of each RUNNING task, 0-100",
                [
                    (f'{{task_id="{escape_label(tid)}"}}', p)
                    for tid, p in sorted(running_progress.items())
                ],
            )
        )
    if concurrency is not None:
        families.append(
            _family(
                "llm_concurrency",
                "gauge",
                "the most LLM calls allowed in flight",
                [("", concurrency)],
            )
        )
    if pool is not None:
        families += [
            _family(name, kind, help_text, [("", pool.get(key, 0))])
            for name, kind, help_text, key in _POOL_METRICS
        ]
    families += [
        _family(
            "log_size_bytes", "gauge", "bytes of valid event log, header included", [("", log_size)]
        ),
        _family("log_events", "gauge", "events in the event log", [("", log_events)]),
    ]
    return "\n".join(families) + "\n"
