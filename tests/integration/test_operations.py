"""Operating it: config reload (file watcher, SIGHUP, API: one path) that restarts only what
changed without failing a request, Prometheus metrics with the engines' own series, JSON logs
with request ids and an access log."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import GEMMA3, ROOT, SMOLLM2, Controller, model_entry, running_controller, write_config

pytestmark = pytest.mark.slow


def models(smollm2: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return [
        model_entry("smollm2-135m", SMOLLM2, **(smollm2 or {})),
        model_entry("gemma3-270m", GEMMA3),
    ]


def engine_of(ctl: Controller, model: Path) -> list[psutil.Process]:
    """The llama-servers of this controller running `model`."""
    found = []
    for pid in ctl.engines():
        try:
            proc = psutil.Process(pid)
            if str(model) in proc.cmdline():
                found.append(proc)
        except psutil.Error:
            continue
    return found


def pids(client: httpx.Client) -> dict[str, int | None]:
    return {s["id"]: s["pid"] for s in client.get("/api/v1/models/status").json()["models"]}


def wait_for(check: Any, timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def audit_results(client: httpx.Client) -> list[str]:
    entries = client.get("/api/v1/audit", params={"action": "config.reload"}).json()["entries"]
    return [e["result"] for e in entries]


def scrape(ctl: Controller) -> dict[str, Any]:
    text = httpx.get(f"{ctl.url}/metrics", timeout=10).text
    return {family.name: family for family in text_string_to_metric_families(text)}


def ask(ctl: Controller, prompt: str) -> int:
    with ctl.client() as client:
        body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": prompt}], "max_tokens": 4}
        return client.post("/v1/chat/completions", json=body).status_code


def test_reload_restarts_only_the_changed_model_without_failing_a_request(tmp_path: Path) -> None:
    with running_controller(tmp_path, models=models()) as ctl, ctl.client() as client:
        for model in ("smollm2-135m", "gemma3-270m"):
            assert client.post("/api/v1/models/load", json={"model_id": model}).status_code == 200
        before = pids(client)
        old_engine = engine_of(ctl, SMOLLM2)
        assert len(old_engine) == 1 and "2048" in old_engine[0].cmdline()

        # A long stream on smollm2 ...
        chunks: list[str] = []
        first_token = threading.Event()

        def stream() -> int:
            body = {
                "model": "smollm2-135m",
                "messages": [{"role": "user", "content": "Tell me a long story."}],
                "max_tokens": 300,
                "ignore_eos": True,
                "stream": True,
            }
            with ctl.client() as own, own.stream("POST", "/v1/chat/completions", json=body) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        chunks.append(line)
                        first_token.set()
                return response.status_code

        with ThreadPoolExecutor(8) as pool:
            streaming = pool.submit(stream)
            assert first_token.wait(60)
            # ... while its ctx_size changes in the file (the watcher reloads it) ...
            write_config(tmp_path, models({"ctx_size": 1024}))
            wait_for(
                lambda: pids(client)["smollm2-135m"] != before["smollm2-135m"] or "config changed" in ctl.log(),
                what="the reload",
            )
            # ... and five more requests arrive during the drain.
            later = [pool.submit(ask, ctl, f"Hi {i}") for i in range(5)]
            assert streaming.result(120) == 200
            assert [f.result(120) for f in later] == [200] * 5
        assert chunks[-1] == "data: [DONE]" and len(chunks) > 250, "the stream was cut"

        after = pids(client)
        assert after["gemma3-270m"] == before["gemma3-270m"], "another model was restarted"
        new_engine = engine_of(ctl, SMOLLM2)
        assert len(new_engine) == 1, "exactly one engine for the model"
        assert new_engine[0].pid == after["smollm2-135m"] != before["smollm2-135m"]
        assert "1024" in new_engine[0].cmdline() and not old_engine[0].is_running()
        # The new engine served the five later requests (and not the 300-token stream).
        predicted = scrape(ctl)["llamacpp:tokens_predicted"]
        served = next(s.value for s in predicted.samples if s.labels.get("model") == "smollm2-135m")
        assert 5 <= served < 250

        # A live field (ttl) by SIGHUP: applied, nothing restarts.
        write_config(tmp_path, models({"ctx_size": 1024, "ttl": 600}))
        ctl.proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: (
                next(m for m in client.get("/api/v1/models").json()["models"] if m["id"] == "smollm2-135m")["ttl"]
                == 600
            ),
            what="the ttl change",
        )
        assert ctl.proc.poll() is None, "SIGHUP must reload, not stop the controller"
        assert pids(client) == after

        # A broken file changes nothing; the refusal is logged and audited.
        (tmp_path / "config" / "models-config.yaml").write_text("models: [{id: smollm2-135m, ctx_size: -5}]\n")
        wait_for(lambda: any(r.startswith("error") for r in audit_results(client)), what="the audited refusal")
        assert "config reload refused, nothing changed" in ctl.log()
        assert pids(client) == after
        assert {m["id"] for m in client.get("/v1/models").json()["data"]} == {"smollm2-135m", "gemma3-270m"}
        answer = client.post("/v1/completions", json={"model": "gemma3-270m", "prompt": "Hi", "max_tokens": 2})
        assert answer.status_code == 200


def test_auth_settings_apply_on_reload_without_a_restart(tmp_path: Path) -> None:
    with running_controller(tmp_path, models=[model_entry("smollm2-135m", SMOLLM2)]) as ctl:
        assert httpx.get(f"{ctl.url}/metrics").status_code == 200
        write_config(tmp_path, [model_entry("smollm2-135m", SMOLLM2)], auth={"metrics_require_token": True})
        wait_for(lambda: httpx.get(f"{ctl.url}/metrics").status_code == 401, what="metrics to need a token")
        assert httpx.get(f"{ctl.url}/metrics", headers=ctl.headers()).status_code == 200


def test_metrics_carry_engine_series_per_model(tmp_path: Path) -> None:
    with running_controller(tmp_path, models=models()) as ctl, ctl.client() as client:
        for model in ("smollm2-135m", "gemma3-270m"):
            answer = client.post("/v1/completions", json={"model": model, "prompt": "Hello", "max_tokens": 3})
            assert answer.status_code == 200
        assert httpx.get(f"{ctl.url}/v1/models").status_code == 401  # one refusal, counted
        families = scrape(ctl)
        engine_families = [f for name, f in families.items() if name.startswith("llamacpp:")]
        assert len(engine_families) >= 5
        for family in engine_families:
            assert {s.labels["model"] for s in family.samples} == {"smollm2-135m", "gemma3-270m"}, family.name
        prompt = {s.labels["model"]: s.value for s in families["llamacpp:prompt_tokens"].samples}
        assert all(v > 0 for v in prompt.values())

        def values(name: str) -> dict[str, float]:
            return {
                s.labels.get("model", ""): s.value for s in families[name].samples if not s.name.endswith("_created")
            }

        assert set(values("llamacontroller_model_queue_depth")) == {"smollm2-135m", "gemma3-270m"}
        assert values("llamacontroller_model_restarts") == {"smollm2-135m": 0, "gemma3-270m": 0}
        assert all(v > 0 for v in values("llamacontroller_model_load_seconds").values())
        refused = {
            s.labels["status"]: s.value
            for s in families["llamacontroller_refused_requests"].samples
            if s.name.endswith("_total")
        }
        assert refused["401"] >= 1
        # Every series the shipped Grafana dashboard queries is exported.
        dashboard = json.loads((ROOT / "deploy" / "grafana" / "llamacontroller.json").read_text())
        queried = {
            re.sub(r"_(total|bucket)$", "", name)
            for panel in dashboard["panels"]
            for target in panel["targets"]
            for name in re.findall(r"(?:llamacontroller_|llamacpp:)\w+", target["expr"])
        }
        assert queried - families.keys() == set()
        requests = families["llamacontroller_requests"].samples
        assert {s.labels["model"] for s in requests if s.name.endswith("_total")} >= {"smollm2-135m", "gemma3-270m"}


def test_json_logs_with_request_ids_and_an_access_line(tmp_path: Path) -> None:
    env = {"LLAMACONTROLLER_LOG_FORMAT": "json"}
    with running_controller(tmp_path, models=[model_entry("smollm2-135m", SMOLLM2)], extra_env=env) as ctl:
        with ctl.client() as client:
            answer = client.post(
                "/v1/completions",
                json={"model": "smollm2-135m", "prompt": "Hi", "max_tokens": 2},
                headers={"X-Request-ID": "req-abc-123"},
            )
            assert answer.status_code == 200 and answer.headers["x-request-id"] == "req-abc-123"
            ours = client.get("/api/v1/models")
            assert len(ours.headers["x-request-id"]) == 32
            assert httpx.get(f"{ctl.url}/api/v1/models", headers={"X-Request-ID": "x" * 500}).status_code == 401
            ctl.usage_row(lambda row: row["request_id"] == "req-abc-123")
        time.sleep(0.5)
        lines = [line for line in ctl.log().splitlines() if line.strip()]
        records = [json.loads(line) for line in lines]  # every line is one JSON object
        access = [r for r in records if r["logger"] == "llamacontroller.access"]
        inference = next(r for r in access if r.get("request_id") == "req-abc-123")
        assert inference["path"] == "/v1/completions" and inference["status"] == 200
        assert inference["principal"] == "admin" and inference["duration_ms"] > 0
        refused = [r for r in access if r["status"] == 401]
        assert refused and all(len(r["request_id"]) == 32 for r in refused)  # a 500-character id is not echoed
        assert any(r["logger"].startswith("llamacontroller.supervisor") for r in records)
