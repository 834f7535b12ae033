"""Service load test on loopback: requests/s, latency percentiles, server memory.

Starts ``topgan serve --camera none`` (a real uvicorn process on 127.0.0.1) and
drives it with a light raw-asyncio HTTP/1.1 client over keep-alive connections:

1. closed loop, as fast as it answers: requests/s for single-crop and 32-crop
   ``POST /classify`` (npy bodies of simulated cells), and single crops with
   ``?qc=false`` beside them (what the posted crops' QC costs);
2. open loop at half that rate: p50 / p99 latency;
3. server memory (VmRSS) before and after ``--requests`` single-crop requests;
4. side by side, the peer floor: the same ONNX model run directly in ONNX Runtime
   (no HTTP, no store), one crop and 32 crops per call.

The model: ``--model DIR``, else the bundled ``models/sw480-sw620``. Bounded:
loopback only, a fixed number of requests, a time limit per phase.

Usage: ``python bench/service.py [--requests 100000] [--connections 16]``
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from acquisition.simulator.datasets import simulate_direct

REPO = Path(__file__).resolve().parents[1]


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
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


async def closed_loop(
    port: int, payload: bytes, connections: int, total: int
) -> tuple[float, list[float]]:
    """``total`` requests over ``connections`` connections, each waiting for its answer."""
    latencies: list[float] = []
    remaining = total
    errors = 0

    async def worker() -> None:
        nonlocal remaining, errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while remaining > 0:
                remaining -= 1
                t0 = time.perf_counter()
                writer.write(payload)
                status = await read_response(reader)
                latencies.append(time.perf_counter() - t0)
                errors += status != 200
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{errors} requests failed")
    return len(latencies) / elapsed, latencies


async def open_loop(
    port: int, payload: bytes, rate: float, seconds: float, connections: int
) -> tuple[list[float], list[float]]:
    """Requests sent on a fixed schedule at ``rate``/s; latency counts from the scheduled
    time. Also returns how late the client itself sent each request (on 2 cores it
    competes with the server for the CPU)."""
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        await pool.put(await asyncio.open_connection("127.0.0.1", port))
    latencies: list[float] = []
    late: list[float] = []
    n = int(rate * seconds)
    start = time.perf_counter()

    async def one(i: int) -> None:
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        reader, writer = await pool.get()
        late.append(time.perf_counter() - scheduled)
        try:
            writer.write(payload)
            await read_response(reader)
        finally:
            await pool.put((reader, writer))
        latencies.append(time.perf_counter() - scheduled)

    await asyncio.gather(*(one(i) for i in range(n)))
    while not pool.empty():
        _, writer = pool.get_nowait()
        writer.close()
    return latencies, late


def server_buckets(port: int) -> dict[float, float]:
    """Cumulative counts of the server's own /classify time histogram."""
    import urllib.request

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


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--requests", type=int, default=100_000, help="single-crop requests for the memory run"
    )
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--model", type=Path)
    args = parser.parse_args()

    model = args.model or REPO / "models" / "sw480-sw620"
    if not (model / "manifest.json").exists():
        parser.error(f"--model: {model} is not a model directory (no manifest.json)")
    work = Path(tempfile.mkdtemp(prefix="topgan-bench-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "TOPGAN_CAMERA": "none",
        "TOPGAN_MODEL_DIR": str(model),
        "TOPGAN_MODELS_ROOT": str(model.parent),
        "TOPGAN_DATABASE_URL": f"sqlite:///{work / 'results.sqlite'}",
        "TOPGAN_PORT": str(port),
        "TOPGAN_EXECUTION_PROVIDER": "cpu",
    }
    log = (work / "server.log").open("wb")
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("topgan")), "-q", "serve"],
        env=env,
        stdout=log,
        stderr=log,
    )
    try:
        for _ in range(300):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.1)
        # Real (simulated) cells: each passes the QC a posted crop goes through, and
        # is stored, as an instrument's crops would be.
        cells_nm = simulate_direct(["sw480", "sw620"], 16, seed=0).opd
        one = request_bytes(port, npy(cells_nm[0]))
        many = request_bytes(port, npy(cells_nm[:32]))
        # The same crop without the QC a posted crop passes: what that check costs.
        unchecked = request_bytes(port, npy(cells_nm[0]), "/classify?qc=false")
        print(f"# service benchmark: {os.cpu_count()} cores, model {model}")
        asyncio.run(closed_loop(port, one, args.connections, 2000))  # warm-up
        rows = []
        for name, payload, cells, count in (
            ("1 crop", one, 1, 20_000),
            ("32 crops", many, 32, 2_000),
            ("1 crop, ?qc=false", unchecked, 1, 20_000),
        ):
            rate, lat = asyncio.run(closed_loop(port, payload, args.connections, count))
            before = server_buckets(port)
            open_lat, late = asyncio.run(open_loop(port, payload, rate / 2, 10.0, args.connections))
            server_p99 = server_p99_ms(before, server_buckets(port))
            rows.append((name, cells, rate, lat, open_lat, late, server_p99))
        direct1 = direct_onnx(model, cells_nm[:1])
        direct32 = direct_onnx(model, cells_nm[:32])
        print(
            "| request | requests/s (closed loop) | cells/s | p50 / p99 at full load | "
            "p50 / p99 at half rate | server p99 at half rate | client lateness p99 | "
            "ONNX Runtime direct, calls/s | HTTP / direct |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for row, direct in zip(rows, (direct1, direct32, direct1), strict=True):
            name, cells, rate, lat, open_lat, late, server_p99 = row
            print(
                f"| {name} | {rate:.0f} | {rate * cells:.0f} | {percentile(lat, 50):.1f} / "
                f"{percentile(lat, 99):.1f} ms | {percentile(open_lat, 50):.1f} / "
                f"{percentile(open_lat, 99):.1f} ms | {server_p99} | {percentile(late, 99):.1f} ms "
                f"| {direct:.0f} | {rate / direct:.2f} |"
            )
        rss_before = rss_mb(server.pid)
        t0 = time.perf_counter()
        asyncio.run(closed_loop(port, one, args.connections, args.requests))
        seconds = time.perf_counter() - t0
        rss_after = rss_mb(server.pid)
        print(
            f"\nServer memory: {rss_before:.1f} MB before, {rss_after:.1f} MB after "
            f"{args.requests} "
            f"single-crop requests ({seconds:.0f} s, {args.requests / seconds:.0f}/s): "
            f"{rss_after - rss_before:+.1f} MB"
        )
        print(
            "Targets on 2 cores: >= 1000 single-crop requests/s; p99 <= 25 ms at half that rate; "
            "no memory growth beyond noise."
        )
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
