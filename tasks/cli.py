"""The ``hospital-refresh`` command line."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from llm import PROVIDERS
from store import (
    AuditReport,
    EventStore,
    LogCorruptedError,
    LogFormatError,
    LogLockedError,
    audit_log,
    iter_valid,
    live_writer,
    repair_log,
)

from ._config import (
    LLM_BACKENDS,
    ConfigError,
    Settings,
    default_log_path,
    load_settings,
    parse_latency,
)
from ._export import to_csv, to_nested
from ._logging import LOG_FORMATS, configure_logging
from ._progress_view import resume_refresh, run_refresh

EXIT_OK = 0
EXIT_TORN = 1
EXIT_CORRUPT = 2
EXIT_INTERRUPTED = 130
EXIT_USAGE = 64

Command = Callable[[argparse.Namespace], int]


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False), flush=True)


def cmd_audit(args: argparse.Namespace) -> int:
    """Verify the whole log; exit 0 intact, 1 torn tail only, 2 corruption."""
    report = audit_log(args.log)
    if args.json:
        _print_json(report.to_dict())
    else:
        _print_audit(report)
    return report.exit_code


def _print_audit(report: AuditReport) -> None:
    d = report.to_dict()
    verdict = {
        "intact": "INTACT",
        "torn_tail": "TORN TAIL (recoverable: the next writer cuts it off)",
        "corrupt": "CORRUPT",
    }[report.fault]
    print(f"log:        {d['path']}")
    print(f"size:       {d['size']} bytes ({d['valid_bytes']} valid)")
    print(f"verdict:    {verdict}")
    if report.detail:
        print(f"detail:     {report.detail}")
    print(f"frames:     {d['frames']} (seq {d['first_seq']}..{d['last_seq']})")
    print(f"first at:   {d['first_event_at']}")
    print(f"last at:    {d['last_event_at']}")
    print(f"tasks seen: {len(d['tasks'])}")
    for tag, count in d["events_by_type"].items():
        print(f"  {tag:<16} {count}")


def cmd_replay(args: argparse.Namespace) -> int:
    """Print the audit trail, one line per event in log order."""
    _, records, result = iter_valid(args.log)
    for rec in records:
        event = rec.event
        if (
            args.task
            and event.task_id != args.task
            and args.task not in getattr(event, "task_ids", ())
        ):
            continue
        if args.json:
            _print_json(rec.to_dict())
        else:
            line = rec.to_dict()
            head = f"#{line.pop('seq'):<7} {line.pop('at')} {line.pop('type'):<16}"
            line.pop("offset")
            rest = " ".join(f"{k}={_short(v)}" for k, v in line.items())
            print(f"{head} {rest}", flush=True)
    if result.detail:
        print(f"warning: {result.detail}", file=sys.stderr)
    return {"intact": EXIT_OK, "torn_tail": EXIT_TORN}.get(result.fault, EXIT_CORRUPT)


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= 120 else f"{text[:117]}..."


def cmd_repair(args: argparse.Namespace) -> int:
    """Copy the valid prefix to a new file; the original is kept untouched."""
    dest, report = repair_log(args.log, args.output)
    print(f"original (untouched): {args.log} ({report.size} bytes, {report.fault})")
    print(f"repaired copy:        {dest} ({report.valid_end} bytes, {report.frames} events)")
    if report.detail:
        print(f"dropped from the copy: {report.detail}")
    print(f"to use it: mv {dest} {args.log} (keep a backup of the original)")
    return EXIT_OK


def _settings(args: argparse.Namespace) -> Settings:
    flags = {
        "log_path": args.log,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "concurrency": getattr(args, "concurrency", None),
        "max_retries": getattr(args, "max_retries", None),
        "backoff_base": getattr(args, "backoff_base", None),
        "sim_latency_ms": getattr(args, "sim_latency", None),
        "sim_failure_rate": getattr(args, "sim_failure_rate", None),
        "seed": getattr(args, "seed", None),
        "llm": getattr(args, "llm", None),
        "llm_provider": getattr(args, "provider", None),
        "llm_base_url": getattr(args, "base_url", None),
        "llm_model": getattr(args, "model", None),
    }
    return load_settings(getattr(args, "config", None), flags)


def cmd_run(args: argparse.Namespace) -> int:
    """Run a full refresh (or one province) to the end; exit 0 SUCCEEDED, 1 FAILED."""
    settings = _settings(args)
    return run_refresh(settings, args.province, plain=args.plain)


def cmd_resume(args: argparse.Namespace) -> int:
    """Resume one task or every interrupted one; exit 0 when each resumed task SUCCEEDED."""
    if bool(args.task_id) == bool(args.all):
        print("error: give either a TASK_ID or --all", file=sys.stderr)
        return EXIT_USAGE
    return resume_refresh(_settings(args), args.task_id, plain=args.plain)


def _open_readonly(path: str) -> EventStore:
    """Replay the log without taking the writer lock; with no live writer, RUNNING tasks are
    shown as interrupted, as a TaskManager opening the log would show them."""
    store = EventStore(path, readonly=True)
    if live_writer(path) is None:
        for state in store.projection.tasks.values():
            state.interrupted = state.status == "RUNNING"
    return store


def cmd_tasks(args: argparse.Namespace) -> int:
    """List the tasks the log knows, as replay rebuilds them."""
    with _open_readonly(args.log) as store:
        statuses = store.projection.list_status(args.status)
    if args.json:
        _print_json(statuses)
        return EXIT_OK
    print(f"{'TASK ID':<14}{'TYPE':<10}{'TARGET':<12}{'STATUS':<11}{'PROGRESS':>8}  CREATED")
    for s in statuses:
        print(
            f"{s['task_id']:<14}{s['task_type']:<10}{(s['target'] or '-'):<12}"
            f"{s['status']:<11}{s['progress']:>7}%  {s['created_at']}"
        )
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    """Print one task's status dict; exit 1 if the log knows no such task."""
    with _open_readonly(args.log) as store:
        status = store.projection.status(args.task_id)
    if status is None:
        print(f"error: no task {args.task_id!r} in {args.log}", file=sys.stderr)
        return 1
    if args.json:
        _print_json(status)
    else:
        for key, value in status.items():
            if key == "verified":  # per level: names matched / checked against GB/T 2260
                value = ", ".join(
                    f"{level} {v['verified']}/{v['checked']}"
                    for level, v in value.items()
                    if v["checked"]
                )
            print(f"{key + ':':<18}{_short(value) if value not in (None, '') else '-'}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    """Export a task's tree as CSV (one row per hospital) or nested JSON."""
    with _open_readonly(args.log) as store:
        state = store.projection.tasks.get(args.task_id)
        if state is None:
            print(f"error: no task {args.task_id!r} in {args.log}", file=sys.stderr)
            return 1
        text = (
            to_csv(state)
            if args.format == "csv"
            else json.dumps(to_nested(state), ensure_ascii=False, indent=2) + "\n"
        )
    if args.output:
        with open(args.output, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the HTTP API and the dashboard with uvicorn until Ctrl-C or SIGTERM."""
    import os

    from ._http import TOKEN_ENV, create_app, serve
    from ._manager import TaskManager

    if args.host not in ("127.0.0.1", "localhost", "::1") and not os.environ.get(TOKEN_ENV):
        print(
            f"warning: serving on {args.host} with no ${TOKEN_ENV}: anyone who can reach "
            "this address can create and cancel tasks",
            file=sys.stderr,
        )
    # Open the log here, so that a locked or damaged log is reported like the other commands do;
    # the app owns the manager from here on and closes it (flush, stop the actors) at shutdown.
    manager = TaskManager(settings=_settings(args))
    try:
        app = create_app(manager, close_manager=True)
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(f"serving {manager.log_path} on http://{host}:{args.port}/", file=sys.stderr)
        try:
            started = serve(app, args.host, args.port, log_level=args.log_level.lower())
        except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C once it has shut down cleanly
            started = True
    finally:
        manager.close()
    return EXIT_OK if started else EXIT_USAGE


def _latency(text: str) -> tuple[float, float]:
    try:
        return parse_latency(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate between 0 and 1")
    return value


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return int(text)


def _add_llm_flags(p: argparse.ArgumentParser) -> None:
    """--llm, --provider, --base-url, --model: which LLM answers (the key comes from the
    environment only: $HOSPITAL_REFRESH_API_KEY or the provider's variable)."""
    p.add_argument(
        "--llm",
        choices=LLM_BACKENDS,
        help="simulated (default) or openai: any chat-completions server",
    )
    p.add_argument(
        "--provider",
        choices=tuple(PROVIDERS),
        help="preset base URL, model and key variable (implies --llm openai)",
    )
    p.add_argument("--base-url", metavar="URL", help="chat-completions base URL, e.g. .../v1")
    p.add_argument("--model", metavar="NAME", help="model name (overrides the preset's)")


def _add_job_options(p: argparse.ArgumentParser, log_help: str) -> None:
    """The options of the commands that run refreshes (``run`` and ``resume``)."""
    p.add_argument("--log", help=log_help)
    p.add_argument("--config", help="TOML settings file (default: ./hospital-refresh.toml)")
    p.add_argument("--concurrency", type=_positive_int, help="LLM calls in flight (default 5)")
    p.add_argument("--max-retries", type=int, help="retries per call (default 3)")
    p.add_argument("--backoff-base", type=float, help="seconds before the first retry (1.0)")
    p.add_argument(
        "--sim-latency", type=_latency, metavar="MIN-MAX", help="simulated delay in ms (10-50)"
    )
    p.add_argument("--sim-failure-rate", type=_rate, metavar="F", help="0..1 (default 0)")
    p.add_argument("--seed", type=int, help="seed of the simulated backend")
    _add_llm_flags(p)
    p.add_argument("--plain", action="store_true", help="plain progress lines, no bar")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    common.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    common.add_argument(
        "--log-format", default="auto", choices=LOG_FORMATS, help="auto: console on a terminal"
    )
    parser = argparse.ArgumentParser(
        prog="hospital-refresh",
        description="Refresh a directory of Chinese hospitals by region with an LLM.",
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add = functools.partial(sub.add_parser, parents=[common], allow_abbrev=False)

    log_help = f"path of the event log (default: $HOSPITAL_REFRESH_LOG or {default_log_path()})"

    p = add("run", help="run a full refresh (or one province) to the end")
    p.add_argument("--province", help="refresh only this province, e.g. 北京市 (default: all)")
    _add_job_options(p, log_help)
    p.set_defaults(func=cmd_run)

    p = add("resume", help="carry on an interrupted or failed task from the log")
    p.add_argument("task_id", nargs="?", help="the task to resume")
    p.add_argument("--all", action="store_true", help="resume every interrupted task")
    _add_job_options(p, log_help)
    p.set_defaults(func=cmd_resume)

    p = add("tasks", help="list the tasks in a log")
    p.add_argument("--log", default=None, help=log_help)
    p.add_argument("--status", choices=("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"))
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_tasks)

    p = add("status", help="print one task's status")
    p.add_argument("task_id")
    p.add_argument("--log", default=None, help=log_help)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)

    p = add("export", help="export a task's tree as CSV or JSON")
    p.add_argument("task_id")
    p.add_argument("--log", default=None, help=log_help)
    p.add_argument("--format", choices=("csv", "json"), default="csv")
    p.add_argument("--output", help="write to this file instead of stdout")
    p.set_defaults(func=cmd_export)

    p = add("serve", help="serve the HTTP API and the dashboard (http://127.0.0.1:8000/)")
    p.add_argument("--log", help=log_help)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    p.add_argument("--config", help="TOML settings file (default: ./hospital-refresh.toml)")
    p.add_argument("--concurrency", type=_positive_int, help="LLM calls in flight (default 5)")
    p.add_argument(
        "--sim-latency", type=_latency, metavar="MIN-MAX", help="simulated delay in ms (10-50)"
    )
    p.add_argument("--seed", type=int, help="seed of the simulated backend")
    _add_llm_flags(p)
    p.set_defaults(func=cmd_serve)

    p = add("audit", help="verify a log without modifying it")
    p.add_argument("--log", required=True, help="path of the event log")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_audit)

    p = add("replay", help="print the audit trail, one line per event")
    p.add_argument("--log", required=True, help="path of the event log")
    p.add_argument("--task", help="only events of this task id")
    p.add_argument("--json", action="store_true", help="JSON lines")
    p.set_defaults(func=cmd_replay)

    p = add("repair", help="copy the valid prefix of a damaged log to a new file")
    p.add_argument("--log", required=True, help="path of the event log")
    p.add_argument("--output", help="path of the copy (default: <log>.repaired-<time>)")
    p.set_defaults(func=cmd_repair)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hospital-refresh`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        configure_logging(args.log_level, args.log_format)
    except ValueError as exc:
        parser.error(str(exc))
    if getattr(args, "log", "unset") is None:
        args.log = default_log_path()
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LogLockedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LogCorruptedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CORRUPT
    except (FileNotFoundError, FileExistsError, IsADirectoryError, PermissionError) as exc:
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return EXIT_USAGE
    except LogFormatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CORRUPT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
