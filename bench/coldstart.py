"""Cold start: a request for an unloaded model until its first token, against the same
llama-server started by hand, and llama.cpp router mode's cold request, in one run.

For each of N runs (interleaved):
- bare: exec llama-server, poll /health every 5 ms until 200 (= "exec to healthy"), then send
  the same streaming request and wait for its first token (= "exec to first token");
- controller: unload the model, then time the streaming request to its first token;
- router: unload the model through router mode's /models/unload, then the same.
Added by the controller = its cold first token minus bare exec-to-first-token (the engine's own
start and prompt time are not ours). The issue's stricter definition (minus exec-to-healthy
only, so it also counts prompt processing) is printed too.

Usage: python bench/coldstart.py [--runs 10]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.proxy import router_mode
from tests.harness import SMOLLM2, llama_server_process, model_entry, running_controller

BODY = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "stream": True}


def first_token(url: str, model: str, headers: dict[str, str] | None = None) -> float:
    """Seconds from sending the request to the first content chunk."""
    began = time.perf_counter()
    with httpx.stream(
        "POST",
        url + "/v1/chat/completions",
        json={**BODY, "model": model},
        headers={**(headers or {}), "Connection": "close"},
        timeout=120,
    ) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: {"):
                return time.perf_counter() - began
    raise RuntimeError("no token")


def bare_run() -> tuple[float, float]:
    began = time.perf_counter()
    with llama_server_process("-m", str(SMOLLM2), "--metrics") as (url, _):
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.005)
        healthy = time.perf_counter() - began
        return healthy, healthy + first_token(url, "x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    healthy, bare, ours, router = [], [], [], []
    root = Path(tempfile.mkdtemp(prefix="bench-cold-"))
    with running_controller(root, models=[model_entry("smollm2-135m", SMOLLM2)]) as ctl, router_mode() as (rt, _):
        mgmt = httpx.Client(base_url=ctl.url, headers=ctl.headers(), timeout=60)
        for _ in range(args.runs):
            h, b = bare_run()
            healthy.append(h)
            bare.append(b)
            mgmt.post("/api/v1/models/unload", json={"model_id": "smollm2-135m"}).raise_for_status()
            ours.append(first_token(ctl.url, "smollm2-135m", ctl.headers()))
            httpx.post(rt + "/models/unload", json={"model": SMOLLM2.stem}, timeout=30)
            deadline = time.monotonic() + 10  # router mode unloads asynchronously
            while time.monotonic() < deadline:
                states = {m["id"]: m["status"]["value"] for m in httpx.get(rt + "/models").json()["data"]}
                if states.get(SMOLLM2.stem) == "unloaded":
                    break
                time.sleep(0.02)
            router.append(first_token(rt, SMOLLM2.stem))
        mgmt.close()

    def p50(values: list[float]) -> float:
        return statistics.median(values) * 1000

    print(f"\ncold start: {args.runs} interleaved runs, SmolLM2-135M Q4_1, p50 in ms\n")
    print("| measure | p50 ms | min ms | max ms |")
    print("|---|---:|---:|---:|")
    for name, values in (
        ("bare llama-server: exec to /health 200", healthy),
        ("bare llama-server: exec to first token", bare),
        ("controller: cold request to first token", ours),
        ("router mode: cold request to first token", router),
    ):
        print(f"| {name} | {p50(values):.1f} | {min(values) * 1000:.1f} | {max(values) * 1000:.1f} |")
    print(f"\nadded by the controller (vs bare exec to first token): {p50(ours) - p50(bare):+.1f} ms")
    print(f"added by router mode (vs bare exec to first token): {p50(router) - p50(bare):+.1f} ms")
    print(f"controller minus bare exec-to-healthy (the issue's measure): {p50(ours) - p50(healthy):+.1f} ms")
    print(json.dumps({"healthy": healthy, "bare": bare, "controller": ours, "router": router}), file=sys.stderr)


if __name__ == "__main__":
    main()
