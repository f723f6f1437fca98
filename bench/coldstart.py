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

Then the same for vLLM (its CPU build) and `transformers serve` on the SmolLM2 safetensors
folder (fewer runs: vLLM takes ~30 s a start): bare = the very command the controller runs
(backends.build_launch, the keeper included), exec to /health 200 and to the first token;
controller = a cold request (after an unload) to the first token.

Usage: python bench/coldstart.py [--runs 10] [--engine-runs 3] [--no-engines]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.proxy import router_mode
from llamacontroller.config import ModelEntry, load_settings
from llamacontroller.supervisor.backends import build_launch
from llamacontroller.supervisor.spawn import engine_environment
from tests.harness import (
    SMOLLM2,
    SMOLLM2_ST,
    die_with_parent,
    free_port,
    llama_server_process,
    model_entry,
    running_controller,
)

ENGINE_CONFIG = {"start_timeout": 300, "engines": {"vllm": {"kv_cache_space": "1GiB"}}}

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


def bare_engine_run(entry: dict[str, object], root: Path) -> tuple[float, float]:
    """The command the controller would run for `entry`, by hand: (exec to healthy, to first token)."""
    settings = load_settings(config_dir=root / "config", data_dir=root / "data")
    port = free_port()
    launch = build_launch(ModelEntry.model_validate(entry), settings, port)
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {launch.api_key}"} if launch.api_key else None
    began = time.perf_counter()
    proc = subprocess.Popen(
        launch.argv,
        env={**engine_environment(os.environ), **launch.env},
        cwd=launch.cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    try:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"{launch.argv[:4]} exited with {proc.returncode}")
            time.sleep(0.005)
        healthy = time.perf_counter() - began
        return healthy, healthy + first_token(url, str(entry["id"]), headers)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def engines(runs: int) -> list[tuple[str, list[float]]]:
    rows = []
    for backend in ("vllm", "transformers"):
        entry = model_entry(f"smollm2-{backend}", SMOLLM2_ST, backend=backend)
        healthy, bare, ours = [], [], []
        root = Path(tempfile.mkdtemp(prefix=f"bench-cold-{backend}-"))
        with running_controller(root, models=[entry], llamacpp=ENGINE_CONFIG) as ctl:
            mgmt = httpx.Client(base_url=ctl.url, headers=ctl.headers(), timeout=300)
            for _ in range(runs):
                h, b = bare_engine_run(entry, root)
                healthy.append(h)
                bare.append(b)
                mgmt.post("/api/v1/models/unload", json={"model_id": entry["id"]}).raise_for_status()
                ours.append(first_token(ctl.url, str(entry["id"]), ctl.headers()))
                # Unloaded again, so that the next bare run has the machine to itself.
                mgmt.post("/api/v1/models/unload", json={"model_id": entry["id"]}).raise_for_status()
            mgmt.close()
        rows += [
            (f"bare {backend}: exec to /health 200", healthy),
            (f"bare {backend}: exec to first token", bare),
            (f"controller, {backend}: cold request to first token", ours),
        ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--engine-runs", type=int, default=3)
    parser.add_argument("--no-engines", action="store_true", help="llama.cpp only")
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
    if args.no_engines:
        return
    rows = engines(args.engine_runs)
    print(f"\ncold start, safetensors SmolLM2-135M (bf16): {args.engine_runs} interleaved runs each, ms\n")
    print("| measure | p50 ms | min ms | max ms |")
    print("|---|---:|---:|---:|")
    for name, values in rows:
        print(f"| {name} | {p50(values):.1f} | {min(values) * 1000:.1f} | {max(values) * 1000:.1f} |")
    for i in range(0, len(rows), 3):
        backend = rows[i][0].split()[1].rstrip(":")
        print(f"added by the controller, {backend}: {p50(rows[i + 2][1]) - p50(rows[i + 1][1]):+.1f} ms")


if __name__ == "__main__":
    main()
