"""Regression tests for what probing found (#18): each is named for the fault it pins down."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import ollama
import openai
import psutil
import pytest

from tests.harness import GEMMA3, SMOLLM2, Controller, model_entry, running_controller, start_controller
from tests.servers import create_database, postgres_server

pytestmark = pytest.mark.slow


def status_of(client: httpx.Client, model: str) -> dict[str, object]:
    return next(s for s in client.get("/api/v1/models/status").json()["models"] if s["id"] == model)


def test_an_explicit_load_after_a_ttl_unload_is_not_undone_at_once(tmp_path: Path) -> None:
    with running_controller(tmp_path, models=[model_entry("smollm2-135m", SMOLLM2, ttl=3)]) as ctl, ctl.client() as c:
        assert c.post("/api/v1/models/load", json={"model_id": "smollm2-135m"}).status_code == 200
        deadline = time.monotonic() + 15
        while status_of(c, "smollm2-135m")["state"] != "stopped":  # idle past its ttl: unloaded
            assert time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(2)
        assert c.post("/api/v1/models/load", json={"model_id": "smollm2-135m"}).status_code == 200
        time.sleep(1.5)  # the old bug: stopped within a second, its idle clock never reset
        assert status_of(c, "smollm2-135m")["state"] == "ready"


def test_prompt_counts_include_the_tokens_the_engine_took_from_its_cache(controller: Controller) -> None:
    prompt = "Summarise the history of the printing press in Europe. " * 8
    messages = [{"role": "user", "content": prompt}]
    with openai.OpenAI(base_url=f"{controller.url}/v1", api_key=controller.token()) as client:
        whole = client.chat.completions.create(model="smollm2-135m", messages=messages, max_tokens=2)
    assert whole.usage is not None
    length = whole.usage.prompt_tokens
    assert length > 50
    with ollama.Client(host=controller.url, headers=controller.headers()) as ol:
        counts = [
            ol.chat(model="smollm2-135m", messages=messages, options={"num_predict": 2}).prompt_eval_count
            for _ in range(2)
        ]
    assert counts == [length, length]  # the second one came mostly from the prompt cache
    # A stream that did not ask for usage: its usage row counts the whole prompt too.
    with controller.client() as http:
        body = {"model": "smollm2-135m", "messages": messages, "max_tokens": 2, "stream": True}
        streamed = http.post("/v1/chat/completions", json=body, headers={"X-Request-ID": "cached-prompt-stream"})
        assert streamed.status_code == 200
    row = controller.usage_row(lambda r: r["request_id"] == "cached-prompt-stream")
    assert row["prompt_tokens"] == length


def test_an_idle_sse_subscription_stays_open_a_minute_with_keep_alives(controller: Controller) -> None:
    keep_alives = 0
    began = time.monotonic()
    with controller.client(timeout=30) as client, client.stream("GET", "/api/v1/events") as stream:
        assert stream.status_code == 200
        for line in stream.iter_lines():
            if line.startswith(":"):
                keep_alives += 1
            if time.monotonic() - began > 61:
                break
    assert time.monotonic() - began > 61, "the stream ended early"
    assert keep_alives >= 3


def test_a_hung_engine_is_killed_and_restarted_by_the_watchdog(tmp_path: Path) -> None:
    with running_controller(tmp_path, models=[model_entry("smollm2-135m", SMOLLM2)]) as ctl, ctl.client() as c:
        assert c.post("/api/v1/models/load", json={"model_id": "smollm2-135m"}).status_code == 200
        pid = int(status_of(c, "smollm2-135m")["pid"])  # type: ignore[call-overload]
        outcome: dict[str, object] = {}

        def stream() -> None:
            body = {
                "model": "smollm2-135m",
                "prompt": "Once upon a time",
                "max_tokens": 2000,
                "ignore_eos": True,
                "stream": True,
            }
            with (
                ctl.client(timeout=120) as own,
                own.stream(
                    "POST", "/v1/completions", json=body, headers={"X-Request-ID": "hung-engine-stream"}
                ) as response,
            ):
                text = "".join(response.iter_lines())
                outcome["ended"] = time.monotonic()
                outcome["text"] = text

        reader = threading.Thread(target=stream)
        reader.start()
        time.sleep(1.0)
        os.kill(pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        reader.join(30)
        assert not reader.is_alive()
        assert float(outcome["ended"]) - stopped_at <= 10, "the in-flight request waited past the watchdog window"  # type: ignore[arg-type]
        assert "error" in str(outcome["text"])
        deadline = time.monotonic() + 30
        while True:
            state = status_of(c, "smollm2-135m")
            if state["state"] == "ready" and state["pid"] not in (None, pid):
                break
            assert time.monotonic() < deadline, state
            time.sleep(0.2)
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        answer = c.post("/v1/completions", json={"model": "smollm2-135m", "prompt": "Hi", "max_tokens": 2})
        assert answer.status_code == 200
        row = ctl.usage_row(lambda r: r["request_id"] == "hung-engine-stream")
        assert row["status"] >= 500  # what the client saw: an error, not a 200
        assert "watchdog" in c.get("/api/v1/models/smollm2-135m/logs").text


def test_a_broken_model_fails_fast_without_evicting_healthy_ones(tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.gguf"
    with SMOLLM2.open("rb") as source:
        truncated.write_bytes(source.read(SMOLLM2.stat().st_size // 2))
    models = [
        model_entry("smollm2-135m", SMOLLM2),
        model_entry("gemma3-270m", GEMMA3),
        model_entry("broken", truncated),
        model_entry("missing", tmp_path / "nowhere.gguf"),
    ]
    with running_controller(tmp_path, models=models, max_loaded=2) as ctl, ctl.client() as c:
        for model in ("smollm2-135m", "gemma3-270m"):
            assert c.post("/api/v1/models/load", json={"model_id": model}).status_code == 200
        before = {m: status_of(c, m)["pid"] for m in ("smollm2-135m", "gemma3-270m")}
        inference = ctl.token("inference-only", "admin", "--scope", "inference")
        with httpx.Client(base_url=ctl.url, headers=ctl.headers(inference), timeout=60) as user:
            for model, cause in (("broken", "truncated"), ("missing", "does not exist")):
                for _ in range(3):
                    began = time.monotonic()
                    answer = user.post("/v1/completions", json={"model": model, "prompt": "Hi", "max_tokens": 1})
                    assert answer.status_code == 503 and cause in answer.json()["error"]["message"], answer.text
                    assert time.monotonic() - began < 1
        assert {m: status_of(c, m)["pid"] for m in before} == before  # nothing was evicted
        assert all(status_of(c, m)["state"] == "ready" for m in before)


def test_a_database_outage_is_a_503_not_a_500(tmp_path: Path) -> None:
    with postgres_server() as admin_url:
        url = create_database(admin_url, "outage")
        port = int(admin_url.split(":")[-1].split("/")[0])
        ctl = start_controller(
            tmp_path, models=[model_entry("smollm2-135m", SMOLLM2)], extra_env={"LLAMACONTROLLER_DATABASE_URL": url}
        )
        try:
            known = ctl.token()
            fresh = ctl.token("fresh", "admin")
            with ctl.client(known) as c:
                assert (
                    c.post(
                        "/v1/completions", json={"model": "smollm2-135m", "prompt": "Hi", "max_tokens": 1}
                    ).status_code
                    == 200
                )
            server = next(
                p
                for p in psutil.process_iter(["name", "cmdline"])
                if p.info["name"] == "postgres" and str(port) in (p.info["cmdline"] or [])
            )
            server.send_signal(signal.SIGINT)  # fast shutdown: the database is gone
            server.wait(20)
            with ctl.client(known) as c:
                # A token seen before still works (cached); inference does not need the database.
                ok = c.post("/v1/completions", json={"model": "smollm2-135m", "prompt": "Hi", "max_tokens": 1})
                assert ok.status_code == 200
                usage = c.get("/api/v1/usage")
                assert usage.status_code == 503 and usage.headers["retry-after"], usage.text
                assert usage.json()["error"]["code"] == "service_unavailable"
            with ctl.client(fresh) as c:
                refused = c.get("/v1/models")
                assert refused.status_code == 503 and "database" in refused.json()["error"]["message"]
        finally:
            ctl.stop()


def test_sigterm_lets_in_flight_streams_finish_then_flushes_usage(tmp_path: Path) -> None:
    ctl = start_controller(tmp_path, models=[model_entry("smollm2-135m", SMOLLM2)])
    chunks: list[str] = []
    first = threading.Event()

    def stream() -> None:
        body = {
            "model": "smollm2-135m",
            "prompt": "Once upon a time",
            "max_tokens": 150,
            "ignore_eos": True,
            "stream": True,
        }
        with (
            ctl.client() as own,
            own.stream("POST", "/v1/completions", json=body, headers={"X-Request-ID": "drained-stream"}) as response,
        ):
            for line in response.iter_lines():
                if line.startswith("data: "):
                    chunks.append(line)
                    first.set()

    reader = threading.Thread(target=stream)
    reader.start()
    try:
        assert first.wait(60)
        began = time.monotonic()
        ctl.proc.send_signal(signal.SIGTERM)
        reader.join(60)
        assert ctl.proc.wait(60) in (0, -signal.SIGTERM)
        assert time.monotonic() - began < 40, "shutdown hung"
    finally:
        ctl.stop()
    assert chunks[-1] == "data: [DONE]" and len(chunks) > 100, "the stream was cut by the shutdown"
    with sqlite3.connect(tmp_path / "data" / "llamacontroller.db") as db:
        status = db.execute("SELECT status FROM usage_log WHERE request_id = 'drained-stream'").fetchall()
    assert status == [(200,)], "the usage row was not flushed before exit"
    assert not ctl.engines()


def test_refused_requests_are_logged_and_counted(controller: Controller) -> None:
    # Regression (#18): Open WebUI's Ollama connection without a key got 401s that no log showed.
    refused = httpx.get(f"{controller.url}/api/tags", headers={"X-Request-ID": "refused-tags"})
    assert refused.status_code == 401
    time.sleep(0.2)
    line = next(line for line in controller.log().splitlines() if "[refused-tags]" in line)
    assert "llamacontroller.access" in line and "GET /api/tags 401" in line
    metrics = httpx.get(f"{controller.url}/metrics").text
    assert 'llamacontroller_refused_requests_total{status="401"}' in metrics


def test_a_stream_read_to_the_end_is_not_logged_as_a_disconnect(controller: Controller) -> None:
    with openai.OpenAI(base_url=f"{controller.url}/v1", api_key=controller.token()) as client:
        for i in range(20):
            stream = client.chat.completions.create(
                model="smollm2-135m",
                messages=[{"role": "user", "content": "Hi"}],
                max_tokens=8,
                stream=True,
                extra_headers={"X-Request-ID": f"read-to-done-{i}"},
            )
            assert [chunk for chunk in stream]  # read to [DONE]; the client then closes
    time.sleep(0.3)
    log = controller.log()
    assert not [line for line in log.splitlines() if "read-to-done" in line and "disconnected" in line]
    row = controller.usage_row(lambda r: r["request_id"] == "read-to-done-19")
    assert row["status"] == 200


def test_a_path_cannot_forge_access_log_lines(controller: Controller) -> None:
    forged = "/v1/x%0A2026-01-01 00:00:00,000 INFO    llamacontroller.access: GET /admin 200"
    httpx.get(f"{controller.url}{forged}", headers={"X-Request-ID": "forged-line"})
    time.sleep(0.2)
    lines = [line for line in controller.log().splitlines() if "GET /admin 200" in line]
    assert lines and all("[forged-line]" in line and "\\n" in line for line in lines)
