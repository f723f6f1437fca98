"""Proxy overhead: direct llama-server vs LlamaController vs llama.cpp router mode, in one run.

(a) streaming chat, max_tokens 32, at concurrency 1, 8 and 64: tokens/s, TTFT p50/p99, errors;
(b) POST /tokenize at concurrency 16: requests/s, latency p50/p99.
Targets are interleaved round by round (A B C A B C ...) so drift hits them alike. Every target
serves SmolLM2-135M with the same flags (-c 2048, --threads 2). Prints one Markdown table.

Usage: python bench/proxy.py [--rounds 3] [--seconds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.harness import (
    SMOLLM2,
    bare_llama_server,
    llama_server_process,
    model_entry,
    running_controller,
    wait_http,
)

CHAT = {
    "messages": [{"role": "user", "content": "Write a short poem about the sea."}],
    "max_tokens": 32,
    "stream": True,
    "ignore_eos": True,
}


@dataclass
class Target:
    name: str
    url: str
    model: str
    headers: dict[str, str] = field(default_factory=dict)
    pid: int | None = None  # whose CPU time per request is reported (the proxy in front)


@dataclass
class Sample:
    tokens: int = 0
    errors: int = 0
    requests: int = 0
    wall: float = 0.0
    cpu: float = 0.0  # CPU seconds of the target's proxy process during the round
    ttft: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)

    def merge(self, other: Sample) -> None:
        self.tokens += other.tokens
        self.errors += other.errors
        self.requests += other.requests
        self.wall += other.wall
        self.cpu += other.cpu
        self.ttft += other.ttft
        self.latency += other.latency


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000


async def stream_round(session: aiohttp.ClientSession, target: Target, concurrency: int, requests: int) -> Sample:
    sample = Sample()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    body = json.dumps({**CHAT, "model": target.model})

    async def worker() -> None:
        while not queue.empty():
            queue.get_nowait()
            began = time.perf_counter()
            first = None
            tokens = 0
            try:
                async with session.post(
                    target.url + "/v1/chat/completions",
                    data=body,
                    headers={**target.headers, "Content-Type": "application/json", "Connection": "close"},
                ) as r:
                    if r.status != 200:
                        sample.errors += 1
                        await r.read()
                        continue
                    async for line in r.content:
                        if line.startswith(b"data: {") and b'"content":"' in line:
                            tokens += 1
                            if first is None:
                                first = time.perf_counter() - began
            except (aiohttp.ClientError, TimeoutError) as exc:
                print(f"{target.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
                sample.errors += 1
                continue
            sample.requests += 1
            sample.tokens += tokens
            if first is not None:
                sample.ttft.append(first)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    sample.wall = time.perf_counter() - began
    return sample


async def tokenize_round(session: aiohttp.ClientSession, target: Target, concurrency: int, seconds: float) -> Sample:
    sample = Sample()
    body = json.dumps({"model": target.model, "content": "The quick brown fox jumps over the lazy dog."})
    headers = {**target.headers, "Content-Type": "application/json"}
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            try:
                async with session.post(target.url + "/tokenize", data=body, headers=headers) as r:
                    await r.read()
                    ok = r.status == 200
            except (aiohttp.ClientError, TimeoutError) as exc:
                print(f"{target.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
                ok = False
            if ok:
                sample.requests += 1
                sample.latency.append(time.perf_counter() - began)
            else:
                sample.errors += 1

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    sample.wall = time.perf_counter() - began
    return sample


@contextlib.contextmanager
def router_mode() -> Iterator[str]:
    models = Path(tempfile.mkdtemp(prefix="router-models-"))
    (models / SMOLLM2.name).symlink_to(SMOLLM2)
    with llama_server_process("--models-dir", str(models)) as (url, _):
        wait_http(url + "/health")
        yield url


async def warm(session: aiohttp.ClientSession, target: Target) -> None:
    await stream_round(session, target, 1, 2)
    await tokenize_round(session, target, 2, 0.5)


async def measure(
    targets: list[Target], rounds: int, seconds: float, workloads: set[str]
) -> dict[tuple[str, str], Sample]:
    results: dict[tuple[str, str], Sample] = {}
    connector = aiohttp.TCPConnector(limit=0)
    # A request silent for 30 s counts as an error rather than stalling the run.
    timeout = aiohttp.ClientTimeout(total=None, sock_read=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for target in targets:
            await warm(session, target)
        for _ in range(rounds):
            for concurrency in (1, 8, 64) if "stream" in workloads else ():
                for target in targets:
                    requests = max(16, concurrency * 2)
                    sample = await stream_round(session, target, concurrency, requests)
                    results.setdefault((f"stream c={concurrency}", target.name), Sample()).merge(sample)
            for target in targets if "tokenize" in workloads else ():
                before = _cpu(target.pid)
                sample = await tokenize_round(session, target, 16, seconds)
                sample.cpu = _cpu(target.pid) - before
                results.setdefault(("tokenize c=16", target.name), Sample()).merge(sample)
    return results


def _cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def table(results: dict[tuple[str, str], Sample], names: list[str]) -> str:
    lines = [
        "| workload | target | throughput | ratio to direct | TTFT / latency p50 ms | p99 ms | errors |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for workload in dict.fromkeys(w for w, _ in results):
        direct = results[(workload, "direct")]
        stream = workload.startswith("stream")
        base = (direct.tokens if stream else direct.requests) / direct.wall
        for name in names:
            s = results[(workload, name)]
            rate = (s.tokens if stream else s.requests) / s.wall
            unit = "tok/s" if stream else "req/s"
            times = s.ttft if stream else s.latency
            lines.append(
                f"| {workload} | {name} | {rate:,.1f} {unit} | {rate / base:.3f} | {pct(times, 50):.2f} | "
                f"{pct(times, 99):.2f} | {s.errors} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="per tokenize round")
    parser.add_argument("--only", choices=["stream", "tokenize"], help="run one workload (default: both)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    models = [model_entry("smollm2-135m", SMOLLM2, max_concurrency=64, queue_timeout=120)]
    with bare_llama_server(SMOLLM2) as direct, router_mode() as router, running_controller(root, models=models) as ctl:
        httpx.post(
            f"{ctl.url}/api/v1/models/load", json={"model_id": "smollm2-135m"}, headers=ctl.headers(), timeout=120
        ).raise_for_status()
        targets = [
            Target("direct", direct, "smollm2-135m"),
            Target("controller", ctl.url, "smollm2-135m", ctl.headers(), ctl.proc.pid),
            Target("router", router, SMOLLM2.stem),
        ]
        workloads = {args.only} if args.only else {"stream", "tokenize"}
        results = asyncio.run(measure(targets, args.rounds, args.seconds, workloads))
    print(f"\nproxy benchmark: {args.rounds} interleaved rounds, SmolLM2-135M Q4_1, {os.cpu_count()} cores\n")
    print(table(results, [t.name for t in targets]))
    if ("tokenize c=16", "direct") in results:
        p50_added = statistics.median(results[("tokenize c=16", "controller")].latency) - statistics.median(
            results[("tokenize c=16", "direct")].latency
        )
        print(f"\ntokenize p50 added by the controller: {p50_added * 1000:.2f} ms")
        lane = results[("tokenize c=16", "controller")]
        print(f"controller CPU per /tokenize request: {lane.cpu / max(lane.requests, 1) * 1e6:.0f} µs")


if __name__ == "__main__":
    main()
