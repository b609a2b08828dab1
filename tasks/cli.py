"""The ``hospital-refresh`` command line."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from store import AuditReport, LogFormatError, audit_log, iter_valid, repair_log

from ._logging import LOG_FORMATS, configure_logging

EXIT_OK = 0
EXIT_TORN = 1
EXIT_CORRUPT = 2
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
    try:
        return int(args.func(args))
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return EXIT_USAGE
    except LogFormatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CORRUPT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
