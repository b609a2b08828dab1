"""50 clients polling ``GET /tasks/{id}`` while a full refresh runs behind the HTTP service.

Run it from the project root::

    .venv/bin/python bench/bench_http.py               # 50 clients, simulated LLM at 10-50 ms
    .venv/bin/python bench/bench_http.py --clients 10 --sim-latency 0-2

The service runs as it does in production, in its own process: ``hospital-refresh serve`` on a
free port of 127.0.0.1 with a fresh log in a temporary directory. This process creates a full
refresh over HTTP, starts it, and runs ``--clients`` clients on one asyncio loop, each with one
keep-alive connection, each sending ``GET /tasks/{id}`` as fast as the answers come back, until
the task has finished. A minimal HTTP/1.1 client is used (not httpx) so that the client side
costs little of the machine's two cores. Reported: requests/s, latency percentiles, errors,
and the refresh's wall time, beside the same refresh run with nobody polling (the baseline),
so the cost of the polling to the refresh itself is visible.

Bounded: traffic goes to 127.0.0.1 only; each run stops after ``--max-seconds`` (default 120)
or ``--max-requests`` (default 1,000,000), whichever comes first, and the server is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

HOST = "127.0.0.1"
FINISHED = ("SUCCEEDED", "FAILED", "CANCELLED")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class Connection:
    """One keep-alive HTTP/1.1 connection speaking just enough of the protocol."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(HOST, port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(body)}\r\n"
        if body:
            head += "Content-Type: application/json\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


@dataclass
class Run:
    """What one run measured."""

    clients: int
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    polling_seconds: float = 0.0
    refresh_seconds: float = 0.0
    final: dict[str, Any] = field(default_factory=dict)
    stopped_by: str = "task finished"


def start_server(log: str, port: int, sim_latency: str) -> subprocess.Popen[bytes]:
    exe = (
        shutil.which("hospital-refresh", path=os.path.dirname(sys.executable)) or "hospital-refresh"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOSPITAL_REFRESH_")}
    return subprocess.Popen(
        [
            exe,
            "serve",
            "--log",
            log,
            "--host",
            HOST,
            "--port",
            str(port),
            "--sim-latency",
            sim_latency,
            "--log-level",
            "WARNING",
        ],
        env=env,
        stdin=subprocess.DEVNULL,
    )


async def wait_healthy(port: int, server: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}")
        try:
            conn = await Connection.open(port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        try:
            status, _ = await conn.request("GET", "/healthz")
        finally:
            await conn.close()
        if status == 200:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("the server did not become healthy in time")


async def measure(port: int, clients: int, max_seconds: float, max_requests: int) -> Run:
    """Create and start a full refresh, poll it with ``clients`` clients until it ends."""
    run = Run(clients)
    control = await Connection.open(port)
    status, body = await control.request("POST", "/tasks", b'{"task_type": "full"}')
    assert status == 201, body
    task_id = json.loads(body)["task_id"]
    path = f"/tasks/{task_id}"
    conns = [await Connection.open(port) for _ in range(clients)]
    done = asyncio.Event()

    async def poll(conn: Connection) -> None:
        while not done.is_set():
            started = time.perf_counter()
            try:
                status, body = await conn.request("GET", path)
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                run.errors += 1
                done.set()
                return
            run.latencies.append(time.perf_counter() - started)
            if status != 200:
                run.errors += 1
                continue
            if len(run.latencies) >= max_requests:
                run.stopped_by = f"{max_requests} requests"
                done.set()
            # Parsing every answer would cost the client more than the server; peek instead.
            if b'"status":"SUCCEEDED"' in body or b'"status":"FAILED"' in body:
                done.set()

    started = time.perf_counter()
    status, body = await control.request("POST", f"{path}/start")
    assert status == 200, body
    pollers = [asyncio.create_task(poll(conn)) for conn in conns]
    try:
        await asyncio.wait_for(done.wait(), max_seconds)
    except TimeoutError:
        run.stopped_by = f"{max_seconds:g} s bound"
        done.set()
    await asyncio.gather(*pollers)
    run.polling_seconds = time.perf_counter() - started
    for conn in (*conns, control):  # the control connection idled past the keep-alive timeout
        await conn.close()
    final = await Connection.open(port)
    status, body = await final.request("GET", path)
    await final.close()
    run.final = json.loads(body)
    run.refresh_seconds = _refresh_seconds(run.final)
    return run


async def baseline(port: int, max_seconds: float) -> Run:
    """The same refresh with one client checking every 0.5 s."""
    run = Run(0)
    conn = await Connection.open(port)
    _, body = await conn.request("POST", "/tasks", b'{"task_type": "full"}')
    path = f"/tasks/{json.loads(body)['task_id']}"
    await conn.request("POST", f"{path}/start")
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline:
        _, body = await conn.request("GET", path)
        run.final = json.loads(body)
        if run.final["status"] in FINISHED:
            break
        await asyncio.sleep(0.5)
    else:
        run.stopped_by = f"{max_seconds:g} s bound"
    run.refresh_seconds = _refresh_seconds(run.final)
    await conn.close()
    return run


def _refresh_seconds(status: dict[str, Any]) -> float:
    from datetime import datetime

    if not status.get("finished_at") or not status.get("started_at"):
        return float("nan")
    end = datetime.fromisoformat(status["finished_at"])
    return (end - datetime.fromisoformat(status["started_at"])).total_seconds()


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def one(
    clients: int, sim_latency: str, max_seconds: float, max_requests: int
) -> tuple[Run | None, Run]:
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        port = free_port()
        server = start_server(os.path.join(tmp, "events.hrlog"), port, sim_latency)
        try:
            asyncio.run(wait_healthy(port, server))
            base = asyncio.run(baseline(port, max_seconds)) if clients else None
            polled = asyncio.run(measure(port, clients, max_seconds, max_requests))
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    return base, polled


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--sim-latency", default="10-50", help="simulated LLM delay, ms MIN-MAX")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="bound of each run")
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="bound of the polls")
    args = parser.parse_args()
    if not 1 <= args.clients <= 200:
        parser.error("--clients must be 1..200")

    base, run = one(args.clients, args.sim_latency, args.max_seconds, args.max_requests)
    lat = sorted(run.latencies)
    ms = [x * 1000 for x in lat]
    rps = len(lat) / run.polling_seconds if run.polling_seconds else float("nan")
    result = {
        "clients": args.clients,
        "sim_latency_ms": args.sim_latency,
        "requests": len(lat),
        "errors": run.errors,
        "seconds": round(run.polling_seconds, 2),
        "requests_per_s": round(rps, 1),
        "latency_ms": {
            "p50": round(percentile(ms, 50), 2),
            "p90": round(percentile(ms, 90), 2),
            "p99": round(percentile(ms, 99), 2),
            "max": round(ms[-1], 2) if ms else None,
            "mean": round(statistics.fmean(ms), 2) if ms else None,
        },
        "refresh": {
            "status": run.final.get("status"),
            "hospitals": run.final.get("counts", {}).get("hospitals"),
            "seconds_while_polled": round(run.refresh_seconds, 2),
            "seconds_baseline": round(base.refresh_seconds, 2) if base else None,
        },
        "stopped_by": run.stopped_by,
        "machine": f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} cpus",
    }
    print(
        f"GET /tasks/{{id}} x {args.clients} clients during a full refresh "
        f"(simulated LLM {args.sim_latency} ms, server in its own process)"
    )
    print(
        f"  requests   {result['requests']:>10,}   errors {run.errors}   "
        f"in {result['seconds']} s ({run.stopped_by})"
    )
    print(f"  throughput {result['requests_per_s']:>10,.1f} requests/s")
    lat_ms = result["latency_ms"]
    print(
        f"  latency    p50 {lat_ms['p50']} ms   p90 {lat_ms['p90']} ms   "
        f"p99 {lat_ms['p99']} ms   max {lat_ms['max']} ms"
    )
    refresh = result["refresh"]
    print(
        f"  refresh    {refresh['status']}, {refresh['hospitals']} hospitals in "
        f"{refresh['seconds_while_polled']} s while polled; "
        f"{refresh['seconds_baseline']} s with nobody polling"
    )
    print("BENCH_RESULT " + json.dumps(result, ensure_ascii=False))
    return 0 if run.errors == 0 and run.final.get("status") == "SUCCEEDED" else 1


if __name__ == "__main__":
    sys.exit(main())
