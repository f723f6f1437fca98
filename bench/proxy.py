"""Proxy overhead: direct llama-server vs LlamaController vs llama.cpp router mode, in one run;
optionally also the controller under granian instead of uvicorn (--granian) and the controller of
an older commit (--baseline REV, checked out in a temporary git worktree).

(a) streaming chat, max_tokens 32, at concurrency 1, 8 and 64: tokens/s, TTFT p50/p99, errors;
(b) POST /tokenize at concurrency 16: requests/s, latency p50/p99 (and at concurrency 1, where
latency is the proxy's own and not the queue's).
Targets are interleaved round by round, and the order rotates each round (A B C, B C A, C A B),
so neither drift nor going first or last favours one of them. Every target serves SmolLM2-135M
with the same flags (-c 2048, --threads 2). Prints one Markdown table, then where the CPU went:
per request (tokenize) or per token (stream), for the load generator, the engine and the proxy
in front of it, read from /proc around each round.

Usage: python bench/proxy.py [--rounds 3] [--seconds 4] [--granian] [--baseline REV]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
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


GRANIAN = [
    sys.executable, "-m", "granian", "--interface", "asgi", "--factory", "--loop", "uvloop", "--no-ws",
    "--host", "127.0.0.1", "--port", "{port}", "--workers", "1", "--log-level", "warning",
    "llamacontroller.app:from_environment",
]  # fmt: skip


@dataclass
class Target:
    name: str
    url: str
    model: str
    headers: dict[str, str] = field(default_factory=dict)
    proxy_pid: int | None = None  # the process in front of the engine (controller, router)
    engine_pid: int | None = None  # the llama-server that answers (found after warm-up)


@dataclass
class Sample:
    tokens: int = 0
    errors: int = 0
    requests: int = 0
    wall: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per process during the rounds
    ttft: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    rounds: list[Sample] = field(default_factory=list)  # the merged ones, to show the spread between rounds

    def units(self, stream: bool) -> int:
        """What a workload counts: tokens for a stream, requests otherwise."""
        return self.tokens if stream else self.requests

    def rate(self, stream: bool) -> float:
        return self.units(stream) / self.wall if self.wall else 0.0

    def merge(self, other: Sample) -> None:
        self.rounds.append(other)
        self.tokens += other.tokens
        self.errors += other.errors
        self.requests += other.requests
        self.wall += other.wall
        for name, seconds in other.cpu.items():
            self.cpu[name] = self.cpu.get(name, 0.0) + seconds
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
def router_mode() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    models = Path(tempfile.mkdtemp(prefix="router-models-"))
    (models / SMOLLM2.name).symlink_to(SMOLLM2)
    with llama_server_process("--models-dir", str(models)) as (url, proc):
        wait_http(url + "/health")
        yield url, proc


# Requests per round. c=8 gets four waves of clients (with llama-server's 4 slots, a round of
# two waves varied ±10 % with how the waves happened to overlap); c=64 two waves.
STREAM_REQUESTS = {1: 16, 8: 32, 64: 128}


async def warm(session: aiohttp.ClientSession, target: Target) -> None:
    await stream_round(session, target, 1, 2)
    await stream_round(session, target, 8, 8)  # every slot has run once
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
            target.engine_pid = target.engine_pid or _engine_of(target.proxy_pid)
        for round_ in range(rounds):
            order = targets[round_ % len(targets) :] + targets[: round_ % len(targets)]
            for concurrency in STREAM_REQUESTS if "stream" in workloads else ():
                for target in order:
                    with _cpu(target) as cpu:
                        sample = await stream_round(session, target, concurrency, STREAM_REQUESTS[concurrency])
                    sample.cpu = cpu
                    results.setdefault((f"stream c={concurrency}", target.name), Sample()).merge(sample)
            # c=1 beside the c=16: one request at a time shows the latency a proxy adds by
            # itself; at c=16 the cores are saturated and latency is mostly the queue.
            for concurrency, duration in ((16, seconds), (1, seconds / 2)) if "tokenize" in workloads else ():
                for target in order:
                    with _cpu(target) as cpu:
                        sample = await tokenize_round(session, target, concurrency, duration)
                    sample.cpu = cpu
                    results.setdefault((f"tokenize c={concurrency}", target.name), Sample()).merge(sample)
    return results


def _engine_of(proxy_pid: int | None) -> int | None:
    """The llama-server a proxy started (router mode starts it on the first request)."""
    if proxy_pid is None:
        return None
    engines = [p for p in psutil.Process(proxy_pid).children(recursive=True) if p.name() == "llama-server"]
    return engines[0].pid if engines else None


@contextlib.contextmanager
def _cpu(target: Target) -> Iterator[dict[str, float]]:
    """CPU seconds (user + system) each process spent inside the block, filled in at its end.
    The proxy counts with its own children (granian's worker), not with the engines it started."""
    groups: dict[str, list[psutil.Process]] = {"load generator": [psutil.Process()]}
    if target.engine_pid is not None:
        groups["engine"] = [psutil.Process(target.engine_pid)]
    if target.proxy_pid is not None:
        proxy = psutil.Process(target.proxy_pid)
        groups["proxy"] = [proxy, *(p for p in proxy.children(recursive=True) if p.name() != "llama-server")]
    before = {name: _seconds(group) for name, group in groups.items()}
    spent: dict[str, float] = {}
    yield spent
    spent.update({name: _seconds(group) - before[name] for name, group in groups.items()})


def _seconds(group: list[psutil.Process]) -> float:
    total = 0.0
    for process in group:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """An older commit's source, checked out beside this one (its controller runs with it on
    PYTHONPATH, on this venv's packages)."""
    repo = Path(__file__).resolve().parents[1]
    path = Path(tempfile.mkdtemp(prefix="bench-baseline-")) / "src"
    subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(path), rev], check=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(path)], check=False)


def table(results: dict[tuple[str, str], Sample], names: list[str]) -> str:
    lines = [
        "| workload | target | throughput | ratio to direct | per-round ratios | TTFT / latency p50 ms | p99 ms "
        "| errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for workload in dict.fromkeys(w for w, _ in results):
        direct = results[(workload, "direct")]
        stream = workload.startswith("stream")
        for name in names:
            s = results[(workload, name)]
            unit = "tok/s" if stream else "req/s"
            times = s.ttft if stream else s.latency
            # Each round's rate over direct's in the same round: how far one round's ratio strays.
            paired = zip(s.rounds, direct.rounds, strict=True)
            ratios = [mine.rate(stream) / base.rate(stream) for mine, base in paired if base.rate(stream)]
            spread = f"{min(ratios):.2f} to {max(ratios):.2f}" if ratios else "-"
            rate, base = s.rate(stream), direct.rate(stream)
            lines.append(
                f"| {workload} | {name} | {rate:,.1f} {unit} | {rate / base:.3f} | {spread} | "
                f"{pct(times, 50):.2f} | {pct(times, 99):.2f} | {s.errors} |"
            )
    return "\n".join(lines)


def cpu_table(results: dict[tuple[str, str], Sample], names: list[str]) -> str:
    """Where the CPU went: µs per request (tokenize) or per token (stream), by process. On a
    machine where all of them share the cores, throughput is the cores divided by the total."""
    processes = ("load generator", "engine", "proxy")
    lines = [
        "| workload | target | per | " + " | ".join(processes) + " | total | busy cores |",
        "|---|---|---|" + "---:|" * (len(processes) + 2),
    ]
    for workload in dict.fromkeys(w for w, _ in results):
        stream = workload.startswith("stream")
        for name in names:
            s = results[(workload, name)]
            units = max(s.units(stream), 1)
            cells = [f"{s.cpu[p] / units * 1e6:,.0f} µs" if p in s.cpu else "-" for p in processes]
            total = sum(s.cpu.values())
            lines.append(
                f"| {workload} | {name} | {'token' if stream else 'request'} | {' | '.join(cells)} | "
                f"{total / units * 1e6:,.0f} µs | {total / s.wall:.2f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="per tokenize round")
    parser.add_argument("--only", choices=["stream", "tokenize"], help="run one workload (default: both)")
    parser.add_argument("--granian", action="store_true", help="also the controller under granian")
    parser.add_argument("--baseline", metavar="REV", help="also the controller of this git revision")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    models = [model_entry("smollm2-135m", SMOLLM2, max_concurrency=64, queue_timeout=120)]
    with contextlib.ExitStack() as stack:
        direct, direct_proc = stack.enter_context(llama_server_process("-m", str(SMOLLM2)))
        router, router_proc = stack.enter_context(router_mode())
        controllers = {"controller": stack.enter_context(running_controller(root / "new", models=models))}
        if args.baseline:
            source = stack.enter_context(worktree(args.baseline))
            env = {"PYTHONPATH": str(source)}
            name = f"baseline {args.baseline[:10]}"
            controllers[name] = stack.enter_context(running_controller(root / "old", models=models, extra_env=env))
        if args.granian:
            granian = running_controller(root / "granian", models=models, command=GRANIAN)
            controllers["controller (granian)"] = stack.enter_context(granian)
        wait_http(direct + "/health")
        targets = [Target("direct", direct, "smollm2-135m", engine_pid=direct_proc.pid)]
        for name, ctl in controllers.items():
            httpx.post(
                f"{ctl.url}/api/v1/models/load", json={"model_id": "smollm2-135m"}, headers=ctl.headers(), timeout=120
            ).raise_for_status()
            targets.append(Target(name, ctl.url, "smollm2-135m", ctl.headers(), proxy_pid=ctl.proc.pid))
        targets.append(Target("router", router, SMOLLM2.stem, proxy_pid=router_proc.pid))
        workloads = {args.only} if args.only else {"stream", "tokenize"}
        results = asyncio.run(measure(targets, args.rounds, args.seconds, workloads))
    names = [t.name for t in targets]
    print(f"\nproxy benchmark: {args.rounds} interleaved rounds, SmolLM2-135M Q4_1, {os.cpu_count()} cores\n")
    print(table(results, names))
    for workload in ("tokenize c=16", "tokenize c=1"):
        if (workload, "direct") in results:
            base = statistics.median(results[(workload, "direct")].latency)
            added = ", ".join(
                f"{name} {(statistics.median(results[(workload, name)].latency) - base) * 1000:.2f} ms"
                for name in names[1:]
            )
            print(f"\n{workload}: p50 latency added over direct: {added}", end="")
    print()
    print("\nCPU time per request or token, by process (user + system, from /proc):\n")
    print(cpu_table(results, names))


if __name__ == "__main__":
    main()
