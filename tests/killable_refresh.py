"""The kill test's subprocess, and the driver that SIGKILLs it (shared with bench/bench_resume.py).

As a script it is the real ``hospital-refresh`` command line::

    python tests/killable_refresh.py CALLS_FILE run --log PATH --sim-latency 1-3 --plain
    python tests/killable_refresh.py CALLS_FILE resume --log PATH --all --plain

It runs the console script's own code (``tasks.cli.main``, hence the same TaskManager calls);
the only change is that the simulated backend the settings build is wrapped so that each LLM
call, as it starts, appends one line ``<monotonic time>\\t<path, tab-separated>`` to
``CALLS_FILE``. The file is opened ``O_APPEND`` and each line is one ``write``, so every line
written before a SIGKILL is kept: the driver can count the calls a killed process made, and
which nodes they were for.

As a module it offers :func:`kill_chain`: one clean run for reference, then chains of
processes (``run``, then ``resume --all`` again and again) each killed at a random moment, until
enough kills were made; the last process of a chain runs to the end.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from events import RUNNING, SUCCEEDED, Projection, TaskResumed
from llm import LLMService, SimulatedLLMService
from store import CORRUPT, EventStore, LogFormatError, iter_valid, snapshot_path
from tasks import Settings, cli

Node = tuple[str, ...]
Tree = dict[Node, tuple[str, ...]]

HERE = Path(__file__).resolve()
CONCURRENCY = 5
"""The CLI's default ``concurrency``: at most this many calls are in flight when a kill lands."""


# --- the subprocess ------------------------------------------------------------------------------


class CallRecorder(LLMService):
    """Delegates to the simulated backend, after writing one line per call to ``fd``."""

    def __init__(self, inner: SimulatedLLMService, fd: int) -> None:
        self._inner = inner
        self._fd = fd
        self.max_items = inner.max_items
        self.any_event_loop = inner.any_event_loop

    async def fetch_children(self, path: Sequence[str]) -> list[str]:
        os.write(self._fd, f"{time.monotonic():.6f}\t{chr(9).join(path)}\n".encode())
        return await self._inner.fetch_children(path)

    async def aclose(self) -> None:
        await self._inner.aclose()


def main(argv: Sequence[str]) -> int:
    """``CALLS_FILE ARGS...``: run ``hospital-refresh ARGS...`` recording each call's start."""
    calls_file, *cli_args = argv
    fd = os.open(calls_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    build = Settings.simulated_service

    def recording_service(settings: Settings) -> LLMService:
        return CallRecorder(build(settings), fd)

    Settings.simulated_service = recording_service  # type: ignore[method-assign]
    return cli.main(cli_args)


# --- the driver ----------------------------------------------------------------------------------


@dataclass
class LogState:
    """What a log holds between two processes."""

    task_id: str | None = None
    status: str | None = None
    children: Tree = field(default_factory=dict)
    resumes: int = 0
    events: int = 0


def read_log(path: Path) -> LogState:
    """The chain's task (the one that was started) as the log's valid prefix holds it."""
    try:
        _, records, result = iter_valid(str(path))
    except (FileNotFoundError, LogFormatError):  # killed before the header was written
        return LogState()
    if result.fault == CORRUPT:  # a kill may tear the tail, never corrupt the middle
        raise RuntimeError(f"{path} is corrupt: {result.detail}")
    projection = Projection().apply_all(records)
    started = [s for s in projection.tasks.values() if s.status != "PENDING"]
    assert len(started) <= 1, f"more than one started task in {path}"
    resumes = sum(isinstance(r.event, TaskResumed) for r in records)
    if not started:
        return LogState(resumes=resumes, events=len(records))
    state = started[0]
    return LogState(state.task_id, state.status, dict(state.children), resumes, len(records))


def final_tree(path: Path, task_id: str) -> Tree:
    """A task's tree as a read-only EventStore opens it (snapshot, then the tail)."""
    with EventStore(path, readonly=True) as store:
        return dict(store.projection.tasks[task_id].children)


@dataclass
class Life:
    """One process of a chain: what it was asked, when it died, what it called and journaled."""

    chain: int
    command: str
    planned_kill: float | None
    returncode: int = 0
    seconds: float = 0.0
    calls: list[Node] = field(default_factory=list)
    call_times: list[float] = field(default_factory=list)
    before: LogState = field(default_factory=LogState)
    after: LogState = field(default_factory=LogState)
    in_snapshot: bool = False
    stderr: str = ""

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL

    @property
    def resumed(self) -> bool:
        """A resume that got as far as journaling ``TaskResumed``."""
        return self.command == "resume" and self.after.resumes > self.before.resumes

    def describe(self) -> str:
        kill = "-" if self.planned_kill is None else f"{self.planned_kill:.2f}s"
        return (
            f"chain {self.chain} {self.command:<6} kill@{kill:>6} rc={self.returncode:>3} "
            f"{self.seconds:5.2f}s calls={len(self.calls):>4} "
            f"journaled {len(self.before.children):>4}->{len(self.after.children):>4}"
            f"{' in-snapshot' if self.in_snapshot else ''}"
        )


@dataclass
class KillReport:
    """Everything a kill run measured."""

    seed: int
    clean: Life
    clean_tree: Tree
    lives: list[Life] = field(default_factory=list)
    chains: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def kills(self) -> int:
        return sum(life.killed for life in self.lives)

    def trace(self) -> str:
        """One line per process, for a failure message."""
        lines = [f"seed={self.seed}", f"clean: {self.clean.describe()}"]
        return "\n".join(lines + [life.describe() for life in self.lives])


class KillChainError(RuntimeError):
    """A process of the kill run did something no kill explains; the message has the trace."""

    def __init__(self, what: str, report: KillReport) -> None:
        super().__init__(f"{what}\n{report.trace()}")
        self.report = report


def _stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _read_calls(path: Path) -> tuple[list[float], list[Node]]:
    times: list[float] = []
    nodes: list[Node] = []
    if not path.exists():
        return times, nodes
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if not line.endswith("\n"):  # cannot happen (one write per line), but never trust it
            continue
        stamp, _, rest = line.rstrip("\n").partition("\t")
        times.append(float(stamp))
        nodes.append(tuple(rest.split("\t")) if rest else ())
    return times, nodes


def live(
    workdir: Path,
    log: Path,
    chain: int,
    command: str,
    planned_kill: float | None,
    env: dict[str, str],
    latency: str,
    timeout: float,
) -> Life:
    """Run one process on ``log`` and SIGKILL it ``planned_kill`` seconds after its start."""
    index = len(list(workdir.glob("calls-*.txt")))
    calls_file = workdir / f"calls-{index:03d}.txt"
    err_file = workdir / f"stderr-{index:03d}.txt"
    life = Life(chain, command, planned_kill, before=read_log(log))
    args = [command, "--log", str(log), "--sim-latency", latency, "--plain"]
    if command == "resume":
        args.append("--all")
    tmp = f"{snapshot_path(str(log))}.tmp"
    tmp_before = _stat(tmp)
    with err_file.open("wb") as err:
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, str(HERE), str(calls_file), *args],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
            cwd=workdir,
        )
        try:
            proc.wait(timeout=timeout if planned_kill is None else planned_kill)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
        finally:
            life.returncode = proc.wait()
        life.seconds = time.monotonic() - started
    tmp_after = _stat(tmp)
    life.in_snapshot = life.killed and tmp_after is not None and tmp_after != tmp_before
    times, life.calls = _read_calls(calls_file)
    life.call_times = [t - started for t in times]
    life.after = read_log(log)
    life.stderr = err_file.read_text(encoding="utf-8", errors="replace")[-2000:]
    return life


def subprocess_env(snapshot_every: int) -> dict[str, str]:
    """The environment of every process: ours, without HOSPITAL_REFRESH_* but the snapshot
    interval."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOSPITAL_REFRESH_")}
    env["HOSPITAL_REFRESH_SNAPSHOT_EVERY"] = str(snapshot_every)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def kill_chain(
    workdir: Path,
    *,
    min_kills: int,
    seed: int,
    latency: str = "1-3",
    snapshot_every: int = 50,
    startup_share: float = 0.2,
    timeout: float = 120.0,
) -> KillReport:
    """A clean run, then chains of processes killed at random moments until ``min_kills``.

    Kill delays come from the clean run's timing: ``startup_share`` of them land uniformly in
    the start-up (imports, replay, the resume itself), the others uniformly in a window after
    start-up that is sized so the kills spread over the whole run (about ``min_kills`` of them
    eat the clean run's work). Once ``min_kills`` were made, the chain's last process runs to the
    end; a chain that finished early is followed by a new one on a fresh log.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    env = subprocess_env(snapshot_every)
    rng = random.Random(seed)
    started = time.monotonic()
    clean_log = workdir / "clean.hrlog"
    clean = live(workdir, clean_log, 0, "run", None, env, latency, timeout)
    report = KillReport(seed, clean, {})
    if clean.returncode != 0 or clean.after.status != SUCCEEDED or clean.after.task_id is None:
        raise KillChainError(f"the clean run failed:\n{clean.stderr}", report)
    report.clean_tree = final_tree(clean_log, clean.after.task_id)
    ready = clean.call_times[0]
    work = clean.call_times[-1] - ready
    window = 2 * work / max(1, min_kills * (1 - startup_share))
    chain = 0
    while report.kills < min_kills:
        chain += 1
        log = workdir / f"chain-{chain}.hrlog"
        state = LogState()
        while state.status != SUCCEEDED:
            if state.status not in (None, RUNNING) or len(report.lives) > 4 * min_kills + 20:
                raise KillChainError(f"the chain went wrong ({state.status})", report)
            command = "resume" if state.status == RUNNING else "run"
            if report.kills >= min_kills:
                planned = None
            elif rng.random() < startup_share:
                planned = rng.uniform(0, ready)
            else:
                planned = ready + rng.uniform(0, window)
            life = live(workdir, log, chain, command, planned, env, latency, timeout)
            report.lives.append(life)
            if not life.killed and life.returncode != 0:
                raise KillChainError(f"a process failed:\n{life.stderr}", report)
            state = life.after
        assert state.task_id is not None
        report.chains.append((log, state.task_id))
    report.seconds = time.monotonic() - started
    return report


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
