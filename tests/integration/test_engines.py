"""vLLM (its CPU build) and `transformers serve`, started on demand by the controller on the
SmolLM2 safetensors folder `make setup` makes, driven with the official clients.

These are real engines: vLLM takes 20-40 s to start here and runs as four processes (the keeper
ties them to the controller); transformers takes ~5 s.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import psutil
import pytest

from tests.harness import (
    SMOLLM2,
    SMOLLM2_ST,
    Controller,
    engine_pids,
    model_entry,
    running_controller,
    start_controller,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

VLLM, HF = "smollm2-vllm", "smollm2-hf"
ENGINES = {"llamacpp": {"start_timeout": 180, "engines": {"vllm": {"kv_cache_space": "1GiB"}}}}


def st_models() -> list[dict[str, Any]]:
    return [
        model_entry(VLLM, SMOLLM2_ST, backend="vllm", aliases=["st-vllm"]),
        model_entry(HF, SMOLLM2_ST, backend="transformers", aliases=["st-hf"], max_concurrency=1),
        model_entry("smollm2-135m", SMOLLM2, aliases=["smollm2"]),
    ]


@pytest.fixture(scope="module")
def ctl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    with running_controller(
        tmp_path_factory.mktemp("engines"), models=st_models(), max_loaded=3, llamacpp=ENGINES["llamacpp"]
    ) as controller:
        yield controller


def status(ctl: Controller, model: str) -> dict[str, Any]:
    with ctl.client() as client:
        models = client.get("/api/v1/models/status").json()["models"]
    return next(m for m in models if m["id"] == model)


def chat(ctl: Controller, model: str, content: str = "What is the capital of France?", **extra: Any) -> Any:
    """One chat completion; a stream comes back as the list of its chunks."""
    extra.setdefault("max_tokens", 16)
    with openai.OpenAI(base_url=ctl.url + "/v1", api_key=ctl.token(), timeout=180, max_retries=0) as client:
        answer = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": content}], temperature=0, **extra
        )
        return list(answer) if extra.get("stream") else answer


@pytest.mark.parametrize("model,engine_id", [(VLLM, VLLM), ("st-vllm", VLLM), (HF, HF), ("ST-HF", HF)])
def test_openai_client_by_id_and_alias_stream_and_not(ctl: Controller, model: str, engine_id: str) -> None:
    answer = chat(ctl, model)
    assert answer.choices[0].message.content
    assert answer.model == engine_id  # the engine knows the model by its id: never a path of ours
    assert answer.usage is not None and answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens > 0

    pieces, models = [], set()
    for chunk in chat(ctl, model, stream=True, stream_options={"include_usage": True}):
        models.add(chunk.model)
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    assert "".join(pieces).strip()
    assert models == {engine_id}

    row = ctl.usage_row(lambda r: r["model"] == engine_id and r["endpoint"] == "/v1/chat/completions")
    assert row["status"] == 200 and row["prompt_tokens"] and row["completion_tokens"]
    assert status(ctl, engine_id)["backend"] == ("vllm" if engine_id == VLLM else "transformers")


def test_a_stream_without_done_from_transformers_reaches_the_client_ended_properly(ctl: Controller) -> None:
    """`transformers serve` never sends `data: [DONE]`; that is how it ends, not an error, and
    clients get the standard ending."""
    with (
        ctl.client() as client,
        client.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": HF, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True},
        ) as response,
    ):
        body = response.read()
    assert response.status_code == 200
    assert body.rstrip().endswith(b"data: [DONE]") and b'"error"' not in body


@pytest.mark.parametrize("model", [VLLM, "st-hf"])
def test_ollama_client(ctl: Controller, model: str) -> None:
    with ollama_client(ctl) as client:
        check_ollama(client, model)


def check_ollama(client: ollama.Client, model: str) -> None:
    answer = client.chat(model=model, messages=[{"role": "user", "content": "Say hello"}], options={"num_predict": 8})
    assert answer.message.content and answer.prompt_eval_count and answer.eval_count
    streamed = list(
        client.chat(
            model=model, messages=[{"role": "user", "content": "Say hello"}], options={"num_predict": 8}, stream=True
        )
    )
    assert streamed[-1].done and "".join(part.message.content or "" for part in streamed).strip()
    generated = client.generate(model=model, prompt="The capital of France is", options={"num_predict": 4})
    assert generated.response


def test_what_an_engine_does_not_serve_is_refused_in_the_callers_dialect(ctl: Controller) -> None:
    with ctl.client() as client:
        response = client.post("/v1/embeddings", json={"model": HF, "input": "hi"})
        assert response.status_code == 501
        assert "does not serve /v1/embeddings" in response.json()["error"]["message"]
        tokens = client.post("/tokenize", json={"model": VLLM, "prompt": "hello world"})
        assert tokens.status_code == 200 and tokens.json()["tokens"]


def test_estimates_are_within_30_percent_of_the_measured_tree_rss(ctl: Controller) -> None:
    for model in (VLLM, HF):
        chat(ctl, model)
        report = status(ctl, model)
        estimate, rss = report["memory_estimate"], report["memory_rss"]
        assert estimate and rss, report
        assert abs(estimate - rss) / rss < 0.30, (
            f"{model}: estimate {estimate / 2**20:.0f} MiB, rss {rss / 2**20:.0f} MiB"
        )


def test_kill_9_of_the_vllm_api_server_fails_the_request_fast_and_the_model_comes_back(ctl: Controller) -> None:
    chat(ctl, VLLM)
    keeper = psutil.Process(status(ctl, VLLM)["pid"])
    api_server = keeper.children()[0]
    tree = [keeper, *keeper.children(recursive=True)]
    outcome: dict[str, Any] = {}

    def long_stream() -> None:
        began = time.monotonic()
        try:
            with (
                ctl.client(timeout=120) as client,
                client.stream(
                    "POST",
                    "/v1/chat/completions",
                    json={
                        "model": VLLM,
                        "messages": [{"role": "user", "content": "Count to one thousand."}],
                        "max_tokens": 2000,
                        "stream": True,
                        "ignore_eos": True,
                    },
                ) as response,
            ):
                for line in response.iter_lines():
                    if line.startswith("data: ") and "content" in line:
                        outcome.setdefault("first", time.monotonic())
                    if '"error"' in line:
                        outcome["error"] = line
        except httpx.HTTPError as exc:
            outcome["error"] = repr(exc)
        outcome["ended"] = time.monotonic()
        outcome["took"] = outcome["ended"] - began

    thread = threading.Thread(target=long_stream)
    thread.start()
    deadline = time.monotonic() + 60
    while "first" not in outcome and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "first" in outcome, "the stream never started"
    killed = time.monotonic()
    api_server.send_signal(signal.SIGKILL)
    thread.join(30)
    assert not thread.is_alive()
    assert outcome["ended"] - killed < 5, f"the in-flight request took {outcome['ended'] - killed:.1f}s to fail"
    assert "error" in outcome
    # The rest of the old tree (engine core, worker) went with it.
    deadline = time.monotonic() + 10
    while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p.pid for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    # Restarted on its own, it answers again.
    deadline = time.monotonic() + 120
    while status(ctl, VLLM)["state"] != "ready" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert chat(ctl, VLLM).choices[0].message.content


def test_one_slot_a_long_stream_on_each_while_the_other_is_asked_for_and_kill_9_leaves_nothing(
    tmp_path: Path,
) -> None:
    """max_loaded_models: 1 with a llama.cpp and a vLLM model: the request for the other model
    waits for the stream to finish, then the swap happens; no request fails. Then the controller
    is killed with -9 while vLLM and its children run: none of them survives 5 s."""
    models = [model_entry(VLLM, SMOLLM2_ST, backend="vllm"), model_entry("smollm2-135m", SMOLLM2)]
    ctl = start_controller(tmp_path, models=models, max_loaded=1, llamacpp=ENGINES["llamacpp"])
    try:
        for streaming, other in (("smollm2-135m", VLLM), (VLLM, "smollm2-135m")):
            chat(ctl, streaming)  # loaded (evicting the other)
            results: dict[str, Any] = {}

            def stream(model: str = streaming, results: dict[str, Any] = results) -> None:
                try:
                    text = "".join(
                        c.choices[0].delta.content or ""
                        for c in chat(ctl, model, "Count to fifty.", stream=True, max_tokens=200)
                        if c.choices
                    )
                    results["stream"] = text
                except openai.OpenAIError as exc:
                    results["stream_error"] = repr(exc)

            thread = threading.Thread(target=stream)
            thread.start()
            time.sleep(1.0)
            try:
                results["other"] = chat(ctl, other).choices[0].message.content
            except openai.OpenAIError as exc:
                results["other_error"] = repr(exc)
            thread.join(300)
            assert "stream_error" not in results and "other_error" not in results, results
            assert results["stream"] and results["other"]
        chat(ctl, VLLM)  # vLLM back (the last swap evicted it) for the kill -9
        assert status(ctl, VLLM)["state"] == "ready"
        tree = engine_pids(ctl.data_dir)
        assert len(tree) >= 3, tree  # keeper, API server, engine core, worker...
        ctl.proc.send_signal(signal.SIGKILL)
        ctl.proc.wait()
        deadline = time.monotonic() + 5
        while engine_pids(ctl.data_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not engine_pids(ctl.data_dir), f"engine processes outlived the controller: {engine_pids(ctl.data_dir)}"
    finally:
        ctl.stop(signal.SIGKILL)
        for pid in engine_pids(ctl.data_dir):
            with_suppressed_kill(pid)


def with_suppressed_kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_sleep_on_evict_puts_vllm_to_sleep_and_wakes_it_without_a_cold_start(tmp_path: Path) -> None:
    """On CPU vLLM's sleep frees nothing (docs/engines.md); what is tested here is the protocol:
    evicted by /sleep (same process, state sleeping), woken by /wake_up on the next request."""
    models = [
        model_entry(VLLM, SMOLLM2_ST, backend="vllm", sleep_on_evict=True),
        model_entry("smollm2-135m", SMOLLM2),
    ]
    with running_controller(tmp_path, models=models, max_loaded=1, llamacpp=ENGINES["llamacpp"]) as ctl:
        chat(ctl, VLLM)
        pid = status(ctl, VLLM)["pid"]
        chat(ctl, "smollm2-135m")  # evicts vLLM: to sleep
        asleep = status(ctl, VLLM)
        assert asleep["state"] == "sleeping" and asleep["pid"] == pid
        assert psutil.Process(pid).is_running()
        began = time.monotonic()
        assert chat(ctl, VLLM).choices[0].message.content  # wakes it (and evicts llama.cpp)
        woke = time.monotonic() - began
        awake = status(ctl, VLLM)
        assert awake["state"] == "ready" and awake["pid"] == pid
        assert status(ctl, "smollm2-135m")["state"] == "stopped"
        assert woke < 15, f"waking took {woke:.1f}s"
        with ctl.client() as client:
            assert client.post("/api/v1/models/unload", json={"model_id": VLLM}).status_code == 200
        assert status(ctl, VLLM)["state"] == "stopped"


def test_tgi_against_a_stand_in(tmp_path: Path) -> None:
    """Not a real TGI (it cannot run here): tests/standins/tgi.py takes the launcher's flags and
    speaks TGI's HTTP. What is checked: the command line, readiness through /health, the served
    name, passthrough and translation, and that its forked "shard" dies with the controller."""
    standin = str(Path(__file__).resolve().parents[1] / "standins" / "tgi.py")
    models = [model_entry("tgi-model", tmp_path, backend="tgi", aliases=["tgi-alias"])]
    config = {"engines": {"tgi": {"command": [sys.executable, standin]}}}
    ctl = start_controller(tmp_path / "ctl", models=models, llamacpp=config)
    try:
        answer = chat(ctl, "TGI-ALIAS")
        assert answer.model == "tgi-model" and answer.choices[0].message.content
        streamed = chat(ctl, "tgi-model", stream=True, stream_options={"include_usage": True})
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices).startswith("Hello")
        row = ctl.usage_row(lambda r: r["model"] == "tgi-model")
        assert row["prompt_tokens"] == 7 and row["completion_tokens"]
        with ollama_client(ctl) as client:
            assert client.chat(model="tgi-alias", messages=[{"role": "user", "content": "hi"}]).message.content
        report = status(ctl, "tgi-model")
        assert report["backend"] == "tgi" and report["state"] == "ready"
        tree = engine_pids(ctl.data_dir)
        assert len(tree) >= 3  # keeper, stand-in launcher, its shard
        ctl.proc.send_signal(signal.SIGKILL)
        ctl.proc.wait()
        deadline = time.monotonic() + 5
        while engine_pids(ctl.data_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not engine_pids(ctl.data_dir)
    finally:
        ctl.stop(signal.SIGKILL)


@contextlib.contextmanager
def ollama_client(ctl: Controller) -> Iterator[ollama.Client]:
    client = ollama.Client(host=ctl.url, headers=ctl.headers(), timeout=180)
    try:
        yield client
    finally:
        client._client.close()  # the ollama client has no close() of its own
