"""Soak and load, bounded in time.

Soak (--duration, default 600 s): mixed OpenAI (`openai` client) and Ollama (httpx /api/chat)
traffic from three tokens, over three models (two llama.cpp, one `transformers serve` on the
safetensors demo), max two loaded: every --switch-every seconds the traffic moves to the next
model (an explicit switch), every --kill-every seconds the engine in use gets SIGKILL. Printed:
requests, failures (and how many of them were in flight on a killed engine), usage rows vs
requests, the controller's RSS and open files over time, orphans after stop.

Load (--streams, default 1000): that many concurrent streams on one model (max_concurrency 4,
queue_timeout 30 s): statuses (only 200 and the configured 429/503 refusals expected) and RSS.

Usage: python bench/soak.py [--duration 600] [--switch-every 30] [--kill-every 120] [--streams 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import openai
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.harness import GEMMA3, SMOLLM2, SMOLLM2_ST, engine_pids, model_entry, start_controller

MODELS = ["smollm2-135m", "gemma3-270m", "smollm2-st"]


class Soak:
    def __init__(self, ctl: object, tokens: list[str], args: argparse.Namespace) -> None:
        self.ctl = ctl
        self.tokens = tokens
        self.args = args
        self.current = MODELS[0]
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.results: list[tuple[float, float, str, str, int | str]] = []  # began, ended, model, dialect, outcome
        self.kills: list[tuple[float, str]] = []
        self.samples: list[tuple[float, float, int]] = []
        self.errors: list[str] = []

    def worker(self, seed: int) -> None:
        rng = random.Random(seed)
        url = self.ctl.url  # type: ignore[attr-defined]
        while not self.stop.is_set():
            token = rng.choice(self.tokens)
            model = self.current
            dialect = rng.choice(["openai", "ollama"])
            messages = [{"role": "user", "content": rng.choice(["Hi", "Name a colour.", "Count to three."])}]
            began = time.monotonic()
            outcome: int | str
            try:
                if dialect == "openai":
                    with openai.OpenAI(base_url=f"{url}/v1", api_key=token, max_retries=0, timeout=120) as client:
                        client.chat.completions.create(model=model, messages=messages, max_tokens=8)
                    outcome = 200
                else:
                    body = {"model": model, "messages": messages, "stream": False, "options": {"num_predict": 8}}
                    answer = httpx.post(
                        f"{url}/api/chat", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=120
                    )
                    outcome = answer.status_code
                    if outcome != 200:
                        self.errors.append(f"{model} ollama {outcome}: {answer.text[:160]}")
            except openai.APIStatusError as exc:
                outcome = exc.status_code
                self.errors.append(f"{model} openai {outcome}: {str(exc)[:160]}")
            except Exception as exc:
                outcome = type(exc).__name__
            with self.lock:
                self.results.append((began, time.monotonic(), model, dialect, outcome))

    def sample(self, pid: int) -> None:
        proc = psutil.Process(pid)
        start = time.monotonic()
        while not self.stop.wait(10):
            self.samples.append((time.monotonic() - start, proc.memory_info().rss / 2**20, proc.num_fds()))

    def conductor(self, admin: httpx.Client) -> None:
        start = time.monotonic()
        next_switch = start + self.args.switch_every
        next_kill = start + self.args.kill_every
        index = 0
        while not self.stop.wait(0.5):
            now = time.monotonic()
            if now >= next_switch:
                index = (index + 1) % len(MODELS)
                self.current = MODELS[index]
                admin.post("/api/v1/models/switch", json={"to_id": self.current}, timeout=120)
                next_switch = now + self.args.switch_every
            if now >= next_kill:
                status = {s["id"]: s for s in admin.get("/api/v1/models/status").json()["models"]}
                pid = status[self.current]["pid"]
                if pid:
                    self.kills.append((time.monotonic(), self.current))
                    for child in psutil.Process(pid).children(recursive=True):
                        child.kill()
                    os.kill(pid, signal.SIGKILL)
                next_kill = now + self.args.kill_every

    def excused(self, began: float, ended: float, model: str) -> bool:
        """In flight on an engine that was killed: began before the kill, ended just after it."""
        return any(m == model and began <= at <= ended <= at + 10 for at, m in self.kills)


def soak(args: argparse.Namespace, root: Path) -> None:
    models = [
        model_entry("smollm2-135m", SMOLLM2, max_concurrency=4),
        model_entry("gemma3-270m", GEMMA3, max_concurrency=4),
        model_entry("smollm2-st", SMOLLM2_ST, backend="transformers", max_concurrency=2, ctx_size=1024),
    ]
    ctl = start_controller(root, models=models, max_loaded=2, llamacpp={"restart_limit": 100})
    try:
        tokens = [ctl.token(f"soak-{i}", "admin") for i in range(3)]
        run = Soak(ctl, tokens, args)
        with ctl.client() as admin:
            threads = [threading.Thread(target=run.worker, args=(i,)) for i in range(args.workers)]
            threads.append(threading.Thread(target=run.sample, args=(ctl.proc.pid,)))
            threads.append(threading.Thread(target=run.conductor, args=(admin,)))
            for thread in threads:
                thread.start()
            time.sleep(args.duration)
            run.stop.set()
            for thread in threads:
                thread.join(180)
        time.sleep(3)  # the usage writer's last batch
    finally:
        ctl.stop()
    time.sleep(2)
    orphans = engine_pids(ctl.data_dir)
    with sqlite3.connect(ctl.data_dir / "llamacontroller.db") as db:
        rows = db.execute("SELECT COUNT(*) FROM usage_log").fetchone()[0]
    outcomes = Counter(str(r[4]) for r in run.results)
    failed = [r for r in run.results if r[4] != 200]
    excused = [r for r in failed if run.excused(r[0], r[1], r[2])]
    print(f"\n## Soak: {args.duration:.0f} s, {args.workers} clients, 3 models (switch every "
          f"{args.switch_every:.0f} s), kill -9 every {args.kill_every:.0f} s\n")
    print("| requests | by outcome | failed | of which in flight on a killed engine | other failures "
          "| usage rows | kills | orphans after stop |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {len(run.results)} | {dict(outcomes)} | {len(failed)} | {len(excused)} | {len(failed) - len(excused)} "
          f"| {rows} | {len(run.kills)} | {len(orphans)} |")
    unexcused = [r for r in failed if r not in excused]
    for began, ended, model, dialect, outcome in unexcused[:10]:
        print(f"  unexcused: {model} {dialect} {outcome} after {ended - began:.1f}s")
    for error in sorted(set(run.errors))[:10]:
        print(f"  error: {error}")
    print("\n| t (s) | controller RSS (MiB) | open files |\n|---|---|---|")
    for t, rss, fds in run.samples:
        print(f"| {t:.0f} | {rss:.1f} | {fds} |")


async def streams(args: argparse.Namespace, root: Path) -> None:
    ctl = start_controller(root, models=[model_entry("smollm2-135m", SMOLLM2, max_concurrency=4, queue_timeout=30)])
    try:
        token = ctl.token()
        proc = psutil.Process(ctl.proc.pid)
        rss_before = proc.memory_info().rss / 2**20
        peak = rss_before
        body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
                "stream": True}
        limits = httpx.Limits(max_connections=args.streams + 10)
        async with httpx.AsyncClient(base_url=ctl.url, headers={"Authorization": f"Bearer {token}"},
                                     limits=limits, timeout=300) as client:

            async def one() -> int | str:
                try:
                    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                        async for _ in response.aiter_bytes():
                            pass
                        return response.status_code
                except Exception as exc:
                    return type(exc).__name__

            async def watch() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, proc.memory_info().rss / 2**20)
                    await asyncio.sleep(0.2)

            watcher = asyncio.create_task(watch())
            began = time.monotonic()
            outcomes = Counter(str(s) for s in await asyncio.gather(*(one() for _ in range(args.streams))))
            took = time.monotonic() - began
            watcher.cancel()
        rss_after = proc.memory_info().rss / 2**20
        fds = proc.num_fds()
    finally:
        ctl.stop()
    print(f"\n## {args.streams} concurrent streams on one model (max_concurrency 4, queue_timeout 30 s)\n")
    print("| outcomes | took (s) | RSS before / peak / after (MiB) | open files after |\n|---|---|---|---|")
    print(f"| {dict(outcomes)} | {took:.1f} | {rss_before:.0f} / {peak:.0f} / {rss_after:.0f} | {fds} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=600)
    parser.add_argument("--switch-every", type=float, default=30)
    parser.add_argument("--kill-every", type=float, default=120)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--no-soak", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        if not args.no_soak:
            soak(args, Path(tmp) / "soak")
        if args.streams:
            asyncio.run(streams(args, Path(tmp) / "streams"))


if __name__ == "__main__":
    main()
