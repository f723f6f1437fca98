"""Management API and CLI paths: logs (tail and live), events, models commands, usage aggregates."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx

from tests.harness import GEMMA3, SMOLLM2, Controller, model_entry, running_controller, write_config


def sse_events(ctl: Controller, path: str, count: int, timeout: float = 30) -> list[dict]:
    events: list[dict] = []
    with httpx.stream("GET", ctl.url + path, headers=ctl.headers(), timeout=timeout) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if len(events) >= count:
                    break
    return events


def test_events_stream_state_changes(controller: Controller) -> None:
    with controller.client() as client:
        client.post("/api/v1/models/unload", json={"model_id": "gemma3-270m"})
        got: list[dict] = []
        reader = threading.Thread(target=lambda: got.extend(sse_events(controller, "/api/v1/events", 2)))
        reader.start()
        time.sleep(0.5)
        client.post("/api/v1/models/load", json={"model_id": "gemma3-270m"})
        reader.join(30)
    assert [(e["from"], e["to"]) for e in got] == [("stopped", "starting"), ("starting", "ready")]
    assert all(e["model"] == "gemma3-270m" for e in got)


def test_logs_tail_and_follow(controller: Controller) -> None:
    with controller.client() as client:
        client.post("/api/v1/models/load", json={"model_id": "smollm2-135m"})
        tail = client.get("/api/v1/models/smollm2/logs", params={"lines": 50}).json()
        assert tail["model"] == "smollm2-135m"
        assert tail["lines"][0]["text"].startswith("$ ") or len(tail["lines"]) == 50
        got: list[dict] = []
        reader = threading.Thread(
            target=lambda: got.extend(sse_events(controller, "/api/v1/models/smollm2-135m/logs?follow=true&lines=0", 1))
        )
        reader.start()
        time.sleep(0.5)
        client.post("/v1/completions", json={"model": "smollm2", "prompt": "hi", "max_tokens": 2})
        reader.join(30)
    assert got and got[0]["seq"] > tail["lines"][-1]["seq"]


def test_cli_models_commands(controller: Controller) -> None:
    env = {**controller.env, "LLAMACONTROLLER_TOKEN": controller.token()}
    controller.env, saved = env, controller.env
    try:
        unloaded = controller.cli("models", "unload", "gemma3")
        assert unloaded.returncode == 0 and "gemma3-270m: stopped" in unloaded.stdout
        loaded = controller.cli("models", "load", "gemma3")
        assert loaded.returncode == 0 and "gemma3-270m: ready" in loaded.stdout
        listed = controller.cli("models", "list")
        assert "gemma3-270m\tllamacpp\tready" in listed.stdout
        missing = controller.cli("models", "load", "nope")
        assert missing.returncode == 1 and "not found" in missing.stderr
    finally:
        controller.env = saved


def test_usage_aggregates(controller: Controller) -> None:
    with controller.client() as client:
        for i in range(3):
            headers = {"X-Request-ID": f"aggregate-{i}"}
            client.post("/v1/completions", json={"model": "smollm2", "prompt": "hi", "max_tokens": 2}, headers=headers)
        controller.usage_row(lambda r: r["request_id"] == "aggregate-2")
        by_model = client.get("/api/v1/usage", params={"group_by": "model"}).json()["groups"]
        smol = next(g for g in by_model if g["key"] == "smollm2-135m")
        assert smol["requests"] >= 3 and smol["completion_tokens"] >= 6
        by_day = client.get("/api/v1/usage", params={"group_by": "day"}).json()["groups"]
        assert sum(g["requests"] for g in by_day) >= 3
        assert client.get("/api/v1/usage", params={"group_by": "nope"}).status_code == 400


def test_config_check_and_help(controller: Controller) -> None:
    result = controller.cli("--help")
    for group in ("serve", "users", "tokens", "models", "config"):
        assert group in result.stdout
    assert controller.cli("config", "check").returncode == 0


def test_config_reload_adds_and_removes_models(tmp_path: Path) -> None:
    # The API path on its own: no file watcher racing it (tests/integration/test_operations.py has that).
    with (
        running_controller(
            tmp_path, models=[model_entry("smollm2-135m", SMOLLM2)], extra_env={"LLAMACONTROLLER_WATCH_CONFIG": "false"}
        ) as ctl,
        ctl.client() as client,
    ):
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["smollm2-135m"]
        write_config(tmp_path, [model_entry("gemma3-270m", GEMMA3)])
        reloaded = client.post("/api/v1/config/reload")
        assert reloaded.json() == {
            "status": "reloaded",
            "added": ["gemma3-270m"],
            "removed": ["smollm2-135m"],
            "changed": [],
            "restarted": [],
            "settings": [],
        }
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["gemma3-270m"]
        answer = client.post("/v1/completions", json={"model": "gemma3-270m", "prompt": "Hi", "max_tokens": 2})
        assert answer.status_code == 200
        (tmp_path / "config" / "models-config.yaml").write_text("models: [{id: x, backend: nope}]\n")
        refused = client.post("/api/v1/config/reload")
        assert refused.status_code == 400 and "backend" in refused.json()["error"]["message"]
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["gemma3-270m"]  # unchanged
        actions = [
            e["result"] for e in client.get("/api/v1/audit", params={"action": "config.reload"}).json()["entries"]
        ]
        assert actions[0].startswith("error") and actions[1] == "ok"
