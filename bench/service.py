"""Service load test on loopback: requests/s, latency percentiles, server memory.

Starts ``topgan serve --camera none`` (a real uvicorn process on 127.0.0.1, in a
process group of its own) and drives it with a light raw-asyncio HTTP/1.1 client over
keep-alive connections:

1. one request at a time over one connection: p50 / p99 latency of single-crop and
   32-crop ``POST /classify`` (npy bodies of simulated cells), each also with
   ``?qc=false`` beside it (what the posted crops' QC costs);
2. closed loop, as fast as it answers (``--connections``): requests/s, and the
   server's CPU time per request (all its threads and its child processes, the
   posted crops' QC among them; on a shared machine steadier than requests/s) and
   the cores it kept busy meanwhile;
3. open loop at half that rate: p50 / p99 latency;
4. server memory (VmRSS) before and after ``--requests`` single-crop requests;
5. side by side, the peer floor: the same ONNX model run directly in ONNX Runtime
   (no HTTP, no store), one crop and 32 crops per call.

The model: ``--model DIR``, else the bundled ``models/sw480-sw620``. Bounded: loopback
only; every phase stops at its request count or its time limit, whichever comes
first; the server (and anything it started) is killed at the end, on Ctrl+C and on an
error too. A keep-alive connection the server closed (uvicorn closes one idle for 5 s)
is opened again and the request sent again; those reconnects are counted and printed.
Any other failure (a status other than 200, an answer cut short, a server that is
gone) stops the run with an error.

Usage: ``python bench/service.py [--requests 100000] [--connections 16] [--seconds 30]
[--open-seconds 10] [--alone-seconds 5] [--memory-seconds 180]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import numpy as np

from acquisition.simulator.datasets import simulate_direct

REPO = Path(__file__).resolve().parents[1]


class ServerClosed(Exception):
    """The server closed the connection before any byte of its answer."""


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array.astype(np.float32))
    return buf.getvalue()


def request_bytes(port: int, body: bytes, path: str = "/classify") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/x-npy\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> int:
    """The status of one answer, its body read; ServerClosed when the connection ended
    before the answer began (a partial answer is an error of its own)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise ServerClosed from None
        raise
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


@dataclass
class Connection:
    """One keep-alive connection, opened again when the server has closed it."""

    port: int
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    opened: int = 0

    @property
    def reconnects(self) -> int:
        """Opened again after the first time."""
        return max(0, self.opened - 1)

    async def send(self, payload: bytes) -> int:
        """Send one request, return the answer's status. A connection found closed, or
        closed by the server before it answered, is opened again once (counted)."""
        for attempt in (1, 2):
            reader, writer = await self._streams()
            try:
                writer.write(payload)
                return await read_response(reader)
            except (ServerClosed, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt == 2:
                    raise RuntimeError(
                        "the server closed a fresh connection before answering"
                    ) from None
        raise AssertionError("unreachable")

    async def _streams(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The open connection; a new one if there is none or the server closed it."""
        if self.reader is None or self.writer is None or self.reader.at_eof():
            self.close()
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.opened += 1
        return self.reader, self.writer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


@dataclass
class Phase:
    """What one phase measured."""

    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    reconnects: int = 0
    unfinished: int = 0
    late: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds


async def closed_loop(
    port: int, payload: bytes, connections: int, total: int, seconds: float
) -> Phase:
    """Up to ``total`` requests over ``connections`` connections, each waiting for its
    answer; no request starts after ``seconds``."""
    phase = Phase()
    remaining = total
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal remaining, errors
        connection = Connection(port)
        try:
            while remaining > 0 and time.perf_counter() < deadline:
                remaining -= 1
                t0 = time.perf_counter()
                status = await connection.send(payload)
                phase.latencies.append(time.perf_counter() - t0)
                errors += status != 200
        finally:
            phase.reconnects += connection.reconnects
            connection.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    phase.seconds = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{errors} requests failed")
    return phase


async def open_loop(
    port: int, payload: bytes, rate: float, seconds: float, connections: int
) -> Phase:
    """Requests sent on a fixed schedule at ``rate``/s for ``seconds``; latency counts
    from the scheduled time. Also records how late the client itself sent each request
    (on 2 cores it competes with the server for the CPU). Requests still unanswered
    ``seconds`` after the last scheduled one are given up and counted as unfinished.
    The most recently used connection is taken first, so the others stay idle (and
    the server may close them: then they are opened again)."""
    pool: asyncio.LifoQueue[Connection] = asyncio.LifoQueue()
    for _ in range(connections):
        pool.put_nowait(Connection(port))
    phase = Phase()
    errors = 0
    n = max(1, int(rate * seconds))
    start = time.perf_counter()

    async def one(i: int) -> None:
        nonlocal errors
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        connection = await pool.get()
        phase.late.append(time.perf_counter() - scheduled)
        try:
            errors += await connection.send(payload) != 200
        except asyncio.CancelledError:
            connection.close()  # cut mid-request: its answer must not reach the next one
            raise
        finally:
            pool.put_nowait(connection)
        phase.latencies.append(time.perf_counter() - scheduled)

    tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
    done, pending = await asyncio.wait(tasks, timeout=2 * seconds)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    phase.seconds = time.perf_counter() - start
    phase.unfinished = len(pending)
    for task in done:
        task.result()  # a real error fails the run here
    while not pool.empty():
        connection = pool.get_nowait()
        phase.reconnects += connection.reconnects
        connection.close()
    if errors:
        raise RuntimeError(f"{errors} requests failed")
    return phase


def server_buckets(port: int) -> dict[float, float]:
    """Cumulative counts of the server's own /classify time histogram."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("topgan_http_request_seconds_bucket") and 'route="/classify"' in line:
            le = line.split('le="')[1].split('"')[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.split()[-1])
    return out


def server_p99_ms(before: dict[float, float], after: dict[float, float]) -> str:
    """The histogram bucket that holds the 99th percentile of the requests in between."""
    total = after[float("inf")] - before.get(float("inf"), 0)
    for le in sorted(after):
        if after[le] - before.get(le, 0) >= 0.99 * total:
            return f"<= {le * 1000:g} ms"
    return "n/a"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def descendants(pid: int) -> list[int]:
    """``pid``'s live child processes, theirs, and so on (the posted crops' QC process)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


def cpu_seconds(pid: int) -> float:
    """CPU time the process and its live descendants have used (every thread's, user
    and system)."""
    total = 0.0
    for each in [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it ended meanwhile
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000


def p99_text(phase: Phase) -> str:
    """p50 / p99 of the answered requests; a p99 beyond the time limit when more than
    1 % were given up."""
    total = len(phase.latencies) + phase.unfinished
    p99 = (
        f"> {phase.seconds * 1000:.0f}"
        if phase.unfinished > 0.01 * total
        else f"{percentile(phase.latencies, 99):.1f}"
    )
    return f"{percentile(phase.latencies, 50):.1f} / {p99} ms"


def direct_onnx(model: Path, crops: np.ndarray, seconds: float = 3.0) -> float:
    """Calls per second of the model run directly (normalization included)."""
    sys.path.insert(0, str(REPO))
    from models.runtime import ModelRuntime

    runtime = ModelRuntime(model, "cpu")
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        runtime.predict(crops)
        n += 1
    return n / (time.perf_counter() - start)


def start_server(model: Path, work: Path, port: int) -> subprocess.Popen[bytes]:
    """``topgan serve --camera none`` in a new session (its own process group, which
    :func:`stop_server` kills), once it accepts connections."""
    env = {
        **os.environ,
        "TOPGAN_CAMERA": "none",
        "TOPGAN_MODEL_DIR": str(model),
        "TOPGAN_MODELS_ROOT": str(model.parent),
        "TOPGAN_DATABASE_URL": f"sqlite:///{work / 'results.sqlite'}",
        "TOPGAN_SERVED_MODEL_FILE": str(work / "served-model.json"),
        "TOPGAN_PORT": str(port),
        "TOPGAN_EXECUTION_PROVIDER": "cpu",
    }
    with (work / "server.log").open("wb") as log:
        server = subprocess.Popen(
            [str(Path(sys.executable).with_name("topgan")), "-q", "serve"],
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return server
            except OSError:
                time.sleep(0.1)
    except BaseException:  # Ctrl+C while it starts
        stop_server(server)
        raise
    stop_server(server)
    tail = (work / "server.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"the server did not start:\n{tail}")


def stop_server(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group; after 30 s, or once the server is gone,
    SIGKILL to what is left of it (a hung server, a child left behind)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.wait(30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait(10)


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # runs the finally blocks: the server is stopped


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--requests", type=int, default=100_000, help="single-crop requests for the memory run"
    )
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--seconds", type=float, default=30.0, help="time limit of each closed-loop phase"
    )
    parser.add_argument(
        "--open-seconds", type=float, default=10.0, help="length of each open-loop phase"
    )
    parser.add_argument(
        "--alone-seconds",
        type=float,
        default=5.0,
        help="time limit of each one-request-at-a-time phase",
    )
    parser.add_argument(
        "--memory-seconds", type=float, default=180.0, help="time limit of the memory run"
    )
    parser.add_argument("--model", type=Path)
    args = parser.parse_args()

    model = args.model or REPO / "models" / "sw480-sw620"
    if not (model / "manifest.json").exists():
        parser.error(f"--model: {model} is not a model directory (no manifest.json)")
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGHUP, _exit_on_signal)
    work = Path(tempfile.mkdtemp(prefix="topgan-bench-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    began = time.perf_counter()
    server = start_server(model, work, port)
    try:
        # Real (simulated) cells: each passes the QC a posted crop goes through, and
        # is stored, as an instrument's crops would be.
        cells_nm = simulate_direct(["sw480", "sw620"], 16, seed=0).opd
        one, many = npy(cells_nm[0]), npy(cells_nm[:32])
        print(f"# service benchmark: {os.cpu_count()} cores, model {model}")
        asyncio.run(  # warm-up
            closed_loop(port, request_bytes(port, one), args.connections, 2000, 5.0)
        )
        rows = []
        # Each request with and without the QC a posted crop passes: what that costs.
        for name, body, cells, count in (
            ("1 crop", one, 1, 20_000),
            ("1 crop, ?qc=false", one, 1, 20_000),
            ("32 crops", many, 32, 2_000),
            ("32 crops, ?qc=false", many, 32, 2_000),
        ):
            path = "/classify?qc=false" if "qc=false" in name else "/classify"
            payload = request_bytes(port, body, path)
            alone = asyncio.run(closed_loop(port, payload, 1, 1000, args.alone_seconds))
            cpu_before = cpu_seconds(server.pid)
            closed = asyncio.run(closed_loop(port, payload, args.connections, count, args.seconds))
            cpu_ms = (cpu_seconds(server.pid) - cpu_before) * 1000 / max(len(closed.latencies), 1)
            if not closed.latencies:
                raise RuntimeError(f"no {name!r} request was answered in {args.seconds} s")
            before = server_buckets(port)
            opened = asyncio.run(
                open_loop(port, payload, closed.rate / 2, args.open_seconds, args.connections)
            )
            server_p99 = server_p99_ms(before, server_buckets(port))
            rows.append((name, cells, alone, closed, cpu_ms, opened, server_p99))
            if server.poll() is not None:
                raise RuntimeError(f"the server exited ({server.returncode}) during {name!r}")
        direct = {1: direct_onnx(model, cells_nm[:1]), 32: direct_onnx(model, cells_nm[:32])}
        print(
            "| request | p50 / p99 alone | requests/s (closed loop) | cells/s | "
            "server CPU per request (cores used) | p50 / p99 at full load | "
            "p50 / p99 at half rate | "
            "server p99 at half rate | client lateness p99 | reconnects | "
            "ONNX Runtime direct, calls/s | HTTP / direct |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for name, cells, alone, closed, cpu_ms, opened, server_p99 in rows:
            unfinished = f", {opened.unfinished} unfinished" if opened.unfinished else ""
            print(
                f"| {name} | {p99_text(alone)} | {closed.rate:.0f} ({len(closed.latencies)} in "
                f"{closed.seconds:.0f} s) | {closed.rate * cells:.0f} | {cpu_ms:.1f} ms "
                f"({cpu_ms * closed.rate / 1000:.2f}) | "
                f"{p99_text(closed)} | "
                f"{p99_text(opened)}{unfinished} | {server_p99} | "
                f"{percentile(opened.late, 99):.1f} ms | "
                f"{alone.reconnects + closed.reconnects + opened.reconnects} | "
                f"{direct[cells]:.0f} | "
                f"{closed.rate / direct[cells]:.2f} |"
            )
        rss_before = rss_mb(server.pid)
        memory = asyncio.run(
            closed_loop(
                port,
                request_bytes(port, one),
                args.connections,
                args.requests,
                args.memory_seconds,
            )
        )
        rss_after = rss_mb(server.pid)
        print(
            f"\nServer memory: {rss_before:.1f} MB before, {rss_after:.1f} MB after "
            f"{len(memory.latencies)} single-crop requests ({memory.seconds:.0f} s, "
            f"{memory.rate:.0f}/s, {memory.reconnects} reconnects): "
            f"{rss_after - rss_before:+.1f} MB"
        )
        print(
            "Targets on 2 cores: >= 1000 single-crop requests/s; p99 <= 25 ms at half that rate; "
            "no memory growth beyond noise."
        )
        print(f"Whole run: {time.perf_counter() - began:.0f} s")
    finally:
        stop_server(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
