"""The supervisor against a real llama-server and both PyPI models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from tests.harness import (
    GEMMA3,
    SMOLLM2,
    bare_llama_server,
    default_models,
    llama_server_bin,
    model_entry,
    running_controller,
    start_controller,
    wait_no_engines,
)

CHAT = {"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4}


def status(client: httpx.Client, model_id: str) -> dict:
    models = client.get("/api/v1/models/status").json()["models"]
    return next(m for m in models if m["id"] == model_id)


def wait_state(client: httpx.Client, model_id: str, state: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = status(client, model_id)
        if current["state"] == state:
            return current
        time.sleep(0.05)
    raise AssertionError(f"{model_id} never reached {state}: {status(client, model_id)}")


def test_concurrent_requests_for_unloaded_model_start_one_engine(tmp_path: Path) -> None:
    with running_controller(tmp_path, models=[model_entry("smollm2-135m", SMOLLM2, max_concurrency=20)]) as ctl:
        headers = ctl.headers()
        assert ctl.engines() == []

        def ask(_: int) -> int:
            body = {**CHAT, "model": "smollm2-135m"}
            return httpx.post(f"{ctl.url}/v1/chat/completions", json=body, headers=headers, timeout=120).status_code

        with ThreadPoolExecutor(20) as pool:
            codes = list(pool.map(ask, range(20)))
        assert codes == [200] * 20
        assert len(ctl.engines()) == 1
        assert ctl.log().count("-> starting") == 1


def test_engine_crash_fails_in_flight_request_then_recovers(tmp_path: Path) -> None:
    with running_controller(tmp_path, models=[model_entry("smollm2-135m", SMOLLM2)]) as ctl, ctl.client() as client:
        pid = client.post("/api/v1/models/load", json={"model_id": "smollm2-135m"}).json()["pid"]
        outcome: dict[str, object] = {}

        def long_request() -> None:
            began = time.monotonic()
            body = {"model": "smollm2-135m", "prompt": "Once upon a time", "max_tokens": 2000, "ignore_eos": True}
            response = httpx.post(f"{ctl.url}/v1/completions", json=body, headers=ctl.headers(), timeout=120)
            outcome.update(status=response.status_code, body=response.json(), took=time.monotonic() - began)

        worker = threading.Thread(target=long_request)
        worker.start()
        time.sleep(1.0)
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        worker.join(30)
        assert outcome["status"] == 502
        assert outcome["body"]["error"]["type"] == "server_error"  # type: ignore[index]
        assert time.monotonic() - killed_at < 5
        failed = wait_state(client, "smollm2-135m", "failed", timeout=5)
        assert "code -9" in failed["last_error"]
        # A request right after the crash is served (the restart or an on-demand start).
        began = time.monotonic()
        response = client.post("/v1/chat/completions", json={**CHAT, "model": "smollm2-135m"})
        assert response.status_code == 200, response.text
        assert time.monotonic() - began < 15
        assert status(client, "smollm2-135m")["pid"] != pid


def test_killed_controller_takes_its_engines_along(tmp_path: Path) -> None:
    ctl = start_controller(tmp_path, models=default_models())
    try:
        with ctl.client() as client:
            for model in ("smollm2-135m", "gemma3-270m"):
                assert client.post("/api/v1/models/load", json={"model_id": model}).status_code == 200
        assert len(ctl.engines()) == 2
        ctl.proc.send_signal(signal.SIGKILL)
        ctl.proc.wait()
        deadline = time.monotonic() + 2
        while ctl.engines() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ctl.engines() == []
    finally:
        ctl.stop()
        wait_no_engines(ctl.data_dir)


def test_start_reaps_engines_left_by_a_previous_run(tmp_path: Path) -> None:
    # Simulate a run whose child survived: an engine nobody owns, recorded in data/run/.
    argv = [llama_server_bin(), "--host", "127.0.0.1", "--port", "0", "-m", str(SMOLLM2), "--no-webui"]
    orphan = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        run = tmp_path / "data" / "run"
        run.mkdir(parents=True)
        (run / "smollm2-135m.pid").write_text(json.dumps({"pid": orphan.pid, "argv": argv, "controller": 1}))
        # A recycled pid running something else must be left alone.
        (run / "other.pid").write_text(json.dumps({"pid": stranger.pid, "argv": argv, "controller": 1}))
        time.sleep(0.3)
        with running_controller(tmp_path, models=[model_entry("smollm2-135m", SMOLLM2)]) as ctl:
            assert orphan.wait(timeout=10) == -signal.SIGKILL
            assert stranger.poll() is None
            assert "reaped 1 engine" in ctl.log()
            assert list(run.glob("*.pid")) == []
    finally:
        for proc in (orphan, stranger):
            proc.kill()
            proc.wait()


def test_switch_with_one_slot_lets_the_stream_finish(tmp_path: Path) -> None:
    models = [model_entry("smollm2-135m", SMOLLM2), model_entry("gemma3-270m", GEMMA3)]
    with running_controller(tmp_path, models=models, max_loaded=1) as ctl:
        headers = ctl.headers()
        body_a = {"model": "smollm2-135m", "prompt": "Count:", "max_tokens": 120, "ignore_eos": True, "stream": True}
        stream_result: dict[str, object] = {}

        def stream_a() -> None:
            chunks = []
            with httpx.stream("POST", f"{ctl.url}/v1/completions", json=body_a, headers=headers, timeout=120) as r:
                stream_result["status"] = r.status_code
                for line in r.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        chunks.append(json.loads(line[6:]))
                    if line == "data: [DONE]":
                        stream_result["done"] = True
            stream_result["tokens"] = sum(1 for c in chunks if c["choices"] and c["choices"][0].get("text") is not None)
            stream_result["finished_at"] = time.monotonic()

        worker = threading.Thread(target=stream_a)
        worker.start()
        with ctl.client() as client:
            wait_state(client, "smollm2-135m", "ready")
            time.sleep(0.5)
            response = client.post("/v1/chat/completions", json={**CHAT, "model": "gemma3-270m"})
            answered_at = time.monotonic()
        worker.join(60)
        assert stream_result["status"] == 200
        assert stream_result["done"] is True
        assert stream_result["tokens"] >= 100
        assert response.status_code == 200, response.text
        assert answered_at >= stream_result["finished_at"]  # type: ignore[operator]
        with ctl.client() as client:
            assert status(client, "smollm2-135m")["state"] == "stopped"
        assert len(ctl.engines()) == 1


def test_idle_ttl_unloads_after_last_request_never_during(tmp_path: Path) -> None:
    with (
        running_controller(tmp_path, models=[model_entry("smollm2-135m", SMOLLM2, ttl=2)]) as ctl,
        ctl.client() as client,
    ):
        # A request longer than the TTL must not be cut.
        body = {"model": "smollm2-135m", "prompt": "Tell a story:", "max_tokens": 220, "ignore_eos": True}
        response = client.post("/v1/completions", json=body)
        assert response.status_code == 200
        assert response.json()["usage"]["completion_tokens"] == 220
        finished = time.monotonic()
        assert status(client, "smollm2-135m")["state"] == "ready"
        wait_state(client, "smollm2-135m", "stopped", timeout=6)
        idle = time.monotonic() - finished
        assert 1.8 <= idle <= 3.5, idle


def test_memory_estimate_is_within_30_percent_of_rss(tmp_path: Path) -> None:
    models = [model_entry("smollm2-135m", SMOLLM2, ctx_size=4096), model_entry("gemma3-270m", GEMMA3, ctx_size=4096)]
    with running_controller(tmp_path, models=models) as ctl, ctl.client() as client:
        for model in ("smollm2-135m", "gemma3-270m"):
            client.post("/api/v1/models/load", json={"model_id": model})
            # Weights are mapped lazily; one request touches them all, as real use does.
            client.post("/v1/chat/completions", json={**CHAT, "model": model})
            current = status(client, model)
            ratio = current["memory_estimate"] / current["memory_rss"]
            assert 0.7 <= ratio <= 1.3, (model, current["memory_estimate"], current["memory_rss"])


@pytest.mark.parametrize("path", [SMOLLM2])
def test_bare_llama_server_helper_cleans_up(path: Path) -> None:
    with bare_llama_server(path) as url:
        assert httpx.get(url + "/health").status_code == 200
    assert not [
        p
        for p in psutil.process_iter(["cmdline"])
        if str(path) in " ".join(p.info["cmdline"] or [])
        and "--no-webui" in (p.info["cmdline"] or [])
        and "--alias" not in (p.info["cmdline"] or [])
    ]
