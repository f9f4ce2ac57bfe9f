"""Load test of `gpuplan serve` on loopback: estimates at a fixed rate, latency percentiles and the server's memory.

    python benchmarks/bench_serve.py                         # 10,000 estimates at 200 per second (50 s)
    python benchmarks/bench_serve.py --requests 2000         # a short run while iterating
    python benchmarks/bench_serve.py --write docs/performance.md

Bounded on purpose: a fixed number of requests at a fixed rate, to 127.0.0.1 only. The server is the real
command (`python -m gpuplan serve`, uvicorn) in its own process; the client is open-loop: request i is due at
start + i / rate whatever earlier answers did, and its latency counts from that due time, so a server that
falls behind shows it in the tail instead of slowing the client down (no coordinated omission). The client
holds a few keep-alive connections, as a capacity script or a page would. Memory is the server process's
resident set (VmRSS), read from /proc every second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
# The targets the load test checks (the web server's requirements).
TARGET_RATE = 200
TARGET_P99_MS = 100.0
# "Flat" memory: the resident set after the last request within this of the one after the first 10% of
# them (the first requests build pydantic validators and fill caches, which is growth that stops).
FLAT_MEMORY_MIB = 5.0
# A spread of what people ask: catalog models of several architectures, dtypes, contexts and engines.
QUERIES = [
    {"model": "meta-llama/Llama-2-7b", "dtype": "fp16", "seq": "4096"},
    {"model": "meta-llama/Llama-3.1-8B-Instruct", "dtype": "bf16", "seq": "8k", "batch": "8", "gpu": "L4"},
    {"model": "Qwen/Qwen2.5-7B-Instruct", "dtype": "int4", "kv_dtype": "fp8", "seq": "32k"},
    {"model": "meta-llama/Llama-3.1-8B-Instruct", "engine": "vllm", "gpu": "H100", "max_model_len": "32768"},
    {"model": "meta-llama/Llama-3.3-70B-Instruct", "engine": "vllm", "gpu": "H100", "tensor_parallel": "4"},
    {"model": "mistralai/Mistral-7B-v0.1", "dtype": "fp16", "seq": "16k", "new_tokens": "512"},
]
SECTION = "## Web server under load"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (/proc/PID/stat fields 14 and 15, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(port: int) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen([sys.executable, "-m", "gpuplan", "serve", "--host", HOST, "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return server
        except OSError:
            if server.poll() is not None:
                raise RuntimeError(f"gpuplan serve exited: {server.stderr.read().decode()}") from None
            time.sleep(0.05)
    server.kill()
    raise RuntimeError("gpuplan serve did not start within 30 s")


class Connection:
    """One keep-alive HTTP/1.1 connection: a request, then its whole answer."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, target: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        assert self.reader is not None
        self.writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n")
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
        body = await self.reader.readexactly(length)
        if status == 200 and b'"schema_version"' not in body:
            return 0  # answered, but not with an estimate: counted apart from the 200s
        return status


async def load(port: int, *, requests: int, rate: float, connections: int, pid: int) -> dict:
    targets = [("/api/estimate?" + urlencode(q)).encode() for q in QUERIES]
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(Connection(port))
    latencies: list[float] = [0.0] * requests
    statuses: dict[int, int] = {}
    memory: list[tuple[int, float]] = []
    done = 0
    start = time.perf_counter() + 0.2

    async def one(index: int) -> None:
        nonlocal done
        due = start + index / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        connection = await pool.get()
        try:
            status = await connection.get(targets[index % len(targets)])
        finally:
            pool.put_nowait(connection)
        latencies[index] = (time.perf_counter() - due) * 1000
        statuses[status] = statuses.get(status, 0) + 1
        done += 1

    async def sample_memory() -> None:
        while done < requests:
            memory.append((done, rss_mib(pid)))
            await asyncio.sleep(1.0)

    cpu_start = cpu_seconds(pid)
    sampler = asyncio.create_task(sample_memory())
    # Requests are created a second ahead of their due time, not all at once: the client stays small.
    pending: set[asyncio.Task] = set()
    for index in range(requests):
        due = start + index / rate
        while due - time.perf_counter() > 1.0:
            await asyncio.sleep(0.2)
        pending.add(asyncio.create_task(one(index)))
        pending = {t for t in pending if not t.done()}
    await asyncio.gather(*pending)
    elapsed = time.perf_counter() - start
    await sampler
    memory.append((done, rss_mib(pid)))
    return {"latencies": latencies, "statuses": statuses, "memory": memory, "elapsed_s": elapsed,
            "server_cpu_s": cpu_seconds(pid) - cpu_start}


def largest_sweep_s() -> float:
    """Seconds for a sweep of the server's largest size (service.MAX_SWEEP_POINTS), computed in this process."""
    from gpuplan.web import schemas, service

    settings = service.ServerSettings()
    # 2 dtypes x 2 GPUs x 10 batches (1..512) x 50 context lengths = 2,000 points.
    seqs = ",".join(f"{i}k" for i in range(1, 51))
    request = schemas.SweepRequest(model="meta-llama/Llama-3.1-8B-Instruct", seq=seqs, batch="1..512",
                                   dtype="fp16,int4", gpu=["H100", "L4"])
    start = time.perf_counter()
    result = service.sweep(request, settings)
    elapsed = time.perf_counter() - start
    assert len(result["points"]) == service.MAX_SWEEP_POINTS, len(result["points"])
    return elapsed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def summarize(raw: dict, *, requests: int, rate: float) -> dict:
    lat = raw["latencies"]
    memory = raw["memory"]
    early = next(m for n, m in memory if n >= requests // 10)
    return {
        "requests": requests, "rate_target": rate, "rate_achieved": round(requests / raw["elapsed_s"], 1),
        "statuses": raw["statuses"], "p50_ms": round(percentile(lat, 50), 2), "p90_ms": round(percentile(lat, 90), 2),
        "p99_ms": round(percentile(lat, 99), 2), "max_ms": round(max(lat), 2),
        "server_cpu_ms_per_request": round(raw["server_cpu_s"] / requests * 1000, 2),
        "rss_start_mib": round(memory[0][1], 1), "rss_after_10pct_mib": round(early, 1),
        "rss_end_mib": round(memory[-1][1], 1), "rss_growth_after_10pct_mib": round(memory[-1][1] - early, 1),
        "rss_max_mib": round(max(m for _, m in memory), 1),
        "rss_by_quarter_mib": [round(next(m for n, m in memory if n >= requests * q // 4), 1) for q in (1, 2, 3, 4)],
    }


def _installed(name: str) -> bool:
    try:
        version(name)
    except PackageNotFoundError:
        return False
    return True


def render(summary: dict, *, shared: str) -> str:
    s = summary
    ok_rate = s["rate_achieved"] >= 0.98 * TARGET_RATE
    ok_p99 = s["p99_ms"] < TARGET_P99_MS
    ok_memory = abs(s["rss_growth_after_10pct_mib"]) <= FLAT_MEMORY_MIB
    errors = sum(v for k, v in s["statuses"].items() if k != 200)
    load = s["load_average_before_after"]
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"
    stack = ", ".join(f"{name} {version(name)}" for name in ("fastapi", "uvicorn", "h11", "httptools", "uvloop")
                      if _installed(name))
    latency = f"{s['p50_ms']} / {s['p90_ms']} / {s['p99_ms']} / {s['max_ms']} ms"
    memory = (f"{s['rss_start_mib']} / {s['rss_after_10pct_mib']} / {s['rss_end_mib']} / {s['rss_max_mib']} "
              "MiB")

    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    rows = [
        ("requests", f"{s['requests']:,} ({errors} not answered 200 with an estimate)"),
        ("rate asked / achieved", f"{s['rate_target']:g} / {s['rate_achieved']:g} per second"),
        ("latency p50 / p90 / p99 / max", latency),
        ("server CPU time per request", f"{s['server_cpu_ms_per_request']} ms"),
        ("server memory (RSS): start / after 10% / end / max", memory),
        ("server memory (RSS) after each quarter of the requests",
         " / ".join(f"{m}" for m in s["rss_by_quarter_mib"]) + " MiB"),
        ("the largest sweep a request may ask (2,000 points), computed once", f"{s['largest_sweep_s']} s"),
        (f"target: {TARGET_RATE} per second", met(ok_rate)),
        (f"target: p99 under {TARGET_P99_MS:g} ms", met(ok_p99)),
        (f"target: memory flat (within {FLAT_MEMORY_MIB:g} MiB after the first 10%)",
         f"{met(ok_memory)} ({s['rss_growth_after_10pct_mib']:+} MiB)"),
    ]
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    return f"""{SECTION}

Generated by `python benchmarks/bench_serve.py --write docs/performance.md`; do not edit by hand.

`gpuplan serve` (one uvicorn process; {stack}) on 127.0.0.1, and an open-loop client in another process on the
same machine sending `GET /api/estimate` for {len(QUERIES)} workloads in turn (catalog models, transformers
and vLLM) at a fixed rate over 4 keep-alive connections; each latency counts from the moment its request was
due. Machine: {machine}; {shared} (1-minute load average {load[0]:g} before the run, {load[1]:g} after it,
this run included).

| figure | value |
|---|---|
{table}
"""


def write_section(path: Path, section: str) -> None:
    """Replace this benchmark's section of the report (from its heading to the end), keeping the rest."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Performance\n"
    head = text.split(SECTION, 1)[0].rstrip("\n")
    path.write_text(head + "\n\n" + section, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=TARGET_RATE, help="requests per second")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--shared", default="the machine was shared with other people's work during the run",
                        help="what else ran on the machine, for the report")
    parser.add_argument("--write", type=Path, help="write the section into this Markdown report")
    args = parser.parse_args()
    if not 1 <= args.requests <= 100_000 or not 0 < args.rate <= 1_000:
        parser.error("keep it bounded: at most 100,000 requests at 1,000 per second")
    load_before = Path("/proc/loadavg").read_text().split()[0]
    port = _free_port()
    server = start_server(port)
    try:
        raw = asyncio.run(load(port, requests=args.requests, rate=args.rate, connections=args.connections,
                               pid=server.pid))
    finally:
        server.terminate()
        server.wait(timeout=10)
    summary = summarize(raw, requests=args.requests, rate=args.rate)
    summary["load_average_before_after"] = [float(load_before), float(Path("/proc/loadavg").read_text().split()[0])]
    summary["largest_sweep_s"] = round(largest_sweep_s(), 3)
    print(json.dumps(summary))
    if args.write:
        write_section(args.write, render(summary, shared=args.shared))
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
