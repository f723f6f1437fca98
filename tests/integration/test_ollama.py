"""The Ollama dialect, driven by the official `ollama` client against the real controller."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from tests.harness import (
    SMOLLM2,
    Controller,
    bare_llama_server,
    die_with_parent,
    free_port,
    model_entry,
    running_controller,
    wait_http,
)


def ollama_client(controller: Controller) -> ollama.Client:
    return ollama.Client(host=controller.url, headers=controller.headers())


@pytest.fixture()
def client(controller: Controller) -> Iterator[ollama.Client]:
    c = ollama_client(controller)
    yield c
    c._client.close()  # the ollama client has no close() of its own


def test_root_and_version(controller: Controller) -> None:
    assert httpx.get(controller.url + "/").text == "Ollama is running"
    assert httpx.head(controller.url + "/").status_code == 200
    browser = httpx.get(controller.url + "/", headers={"Accept": "text/html"}, follow_redirects=False)
    assert browser.status_code == 303 and browser.headers["location"].endswith("/ui/")
    version = httpx.get(controller.url + "/api/version").json()["version"]
    assert tuple(int(p) for p in version.split(".")) >= (0, 6, 4)


def test_list_and_show(client: ollama.Client) -> None:
    models = {m.model: m for m in client.list().models}
    assert set(models) == {"smollm2-135m:latest", "gemma3-270m:latest"}
    smol = models["smollm2-135m:latest"]
    assert smol.details.family == "llama" and smol.details.quantization_level == "Q4_1"
    assert smol.size == SMOLLM2.stat().st_size and len(smol.digest) == 64
    shown = client.show("smollm2")
    assert shown.modelinfo["general.architecture"] == "llama"
    assert "completion" in shown.capabilities
    assert "num_ctx" in shown.parameters
    assert shown.template


def test_chat_stream_and_not(client: ollama.Client) -> None:
    reply = client.chat(
        model="smollm2", messages=[{"role": "user", "content": "Say hi"}], options={"num_predict": 8, "temperature": 0}
    )
    assert reply.message.content and reply.done and reply.eval_count and reply.eval_count > 0
    assert reply.total_duration and reply.prompt_eval_count
    parts = list(
        client.chat(
            model="smollm2:latest",
            messages=[{"role": "user", "content": "Count"}],
            stream=True,
            options={"num_predict": 8},
        )
    )
    assert not parts[0].done and parts[-1].done and parts[-1].done_reason in ("stop", "length")
    assert "".join(p.message.content or "" for p in parts)


def test_generate_stream_and_not(client: ollama.Client) -> None:
    reply = client.generate(model="gemma3", prompt="The sky is", options={"num_predict": 5})
    assert reply.response and reply.done
    parts = list(client.generate(model="smollm2", prompt="One, two,", stream=True, options={"num_predict": 5}))
    assert parts[-1].done and 0 < (parts[-1].eval_count or 0) <= 5


def test_format_json_schema(client: ollama.Client) -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    reply = client.generate(
        model="smollm2",
        prompt="Give a JSON object with a key a.",
        format=schema,
        options={"num_predict": 64, "temperature": 0},
    )
    assert isinstance(json.loads(reply.response)["a"], int)  # grammar-constrained by the schema
    loose = client.generate(model="smollm2", prompt="JSON please:", format="json", options={"num_predict": 4})
    assert loose.response.lstrip().startswith("{")


def test_unknown_model_is_404(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model="nope", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 404


def test_pull_of_a_registry_name_answers_clearly(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.pull("llama3")
    assert caught.value.status_code == 400 and "hf.co/org/repo:QUANT" in str(caught.value.error)


def test_load_ps_and_unload(client: ollama.Client) -> None:
    loaded = client.generate(model="gemma3", prompt="", keep_alive="10m")
    assert loaded.done_reason == "load"
    ps = {m.model: m for m in client.ps().models}
    assert "gemma3-270m:latest" in ps and ps["gemma3-270m:latest"].context_length == 2048
    assert ps["gemma3-270m:latest"].expires_at is not None
    unloaded = client.generate(model="gemma3", prompt="", keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert "gemma3-270m:latest" not in {m.model for m in client.ps().models}


def test_keep_alive_zero_unloads_after_the_answer(client: ollama.Client) -> None:
    client.chat(model="gemma3", messages=[{"role": "user", "content": "hi"}], keep_alive=0, options={"num_predict": 2})
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and "gemma3-270m:latest" in {m.model for m in client.ps().models}:
        time.sleep(0.1)
    assert "gemma3-270m:latest" not in {m.model for m in client.ps().models}
    # keep_alive 0 governed that load only: a plain load afterwards stays (harness ttl 0 = never).
    client.generate(model="gemma3", prompt="")
    time.sleep(1)
    assert "gemma3-270m:latest" in {m.model for m in client.ps().models}


def test_bad_requests_get_ollama_errors(controller: Controller) -> None:
    url = controller.url + "/api/chat"
    for body, status in (
        (b"{", 400),
        (b'{"model": "smollm2", "messages": "x"}', 400),
        (b'{"model": "smollm2", "messages": [], "keep_alive": "soon"}', 400),
    ):
        response = httpx.post(url, content=body, headers=controller.headers())
        assert response.status_code == status
        assert isinstance(response.json()["error"], str)
    assert httpx.post(url, json={"model": "smollm2"}).status_code == 401
    assert isinstance(httpx.post(url, json={"model": "smollm2"}).json()["error"], str)


@pytest.fixture()
def embed_controller(tmp_path: Path) -> Iterator[Controller]:
    with running_controller(tmp_path, models=[model_entry("smollm2-embed", SMOLLM2, embedding=True)]) as ctl:
        yield ctl


def test_embed_and_legacy_embeddings(embed_controller: Controller) -> None:
    client = ollama_client(embed_controller)
    try:
        result = client.embed(model="smollm2-embed", input=["a", "b"])
        assert len(result.embeddings) == 2 and len(result.embeddings[0]) == 576
        legacy = client.embeddings(model="smollm2-embed", prompt="a")
        assert len(legacy.embedding) == 576
    finally:
        client._client.close()


def test_open_webui_connect_and_chat(controller: Controller) -> None:
    """What Open WebUI does against an Ollama connection with a bearer key (inference only, marked
    by an admin as a trusted front end so that its user headers are recorded)."""
    token = controller.token("open-webui", "admin", "--scope", "inference", "--trusted-frontend")
    headers = {"Authorization": f"Bearer {token}", "X-OpenWebUI-User-Name": "alice", "X-OpenWebUI-User-Id": "u-1"}
    with httpx.Client(base_url=controller.url, headers=headers, timeout=120) as web:
        assert int(web.get("/api/version").json()["version"].split(".")[0]) >= 0
        names = [m["name"] for m in web.get("/api/tags").json()["models"]]
        assert "smollm2-135m:latest" in names
        assert "models" in web.get("/api/ps").json()
        body = {
            "model": "smollm2-135m:latest",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "options": {"num_predict": 4},
        }
        with web.stream("POST", "/api/chat", json=body) as response:
            assert response.headers["content-type"].startswith("application/x-ndjson")
            lines = [json.loads(line) for line in response.iter_lines() if line]
        assert lines[-1]["done"] is True
        # An inference-only token may not unload a model every caller shares: keep_alive is ignored.
        unload = web.post("/api/generate", json={"model": "smollm2-135m:latest", "keep_alive": 0, "prompt": ""})
        assert unload.status_code == 200 and unload.json()["done_reason"] == "load"
        assert "smollm2-135m:latest" in [m["name"] for m in web.get("/api/ps").json()["models"]]
    chat = controller.usage_row(lambda r: (r["client_user"] or {}).get("name") == "alice", model="smollm2-135m")
    assert chat["endpoint"] == "/api/chat" and chat["dialect"] == "ollama"
    assert chat["prompt_tokens"] > 0 and chat["completion_tokens"] > 0


def test_non_stream_answers_are_counted_in_usage(client: ollama.Client, controller: Controller) -> None:
    client.chat(model="smollm2", messages=[{"role": "user", "content": "usage please"}], options={"num_predict": 3})
    row = controller.usage_row(lambda r: r["endpoint"] == "/api/chat" and r["completion_tokens"] == 3)
    assert row["endpoint"] == "/api/chat" and row["completion_tokens"] == 3 and row["prompt_tokens"] > 0


def test_translation_needs_only_the_openai_dialect(tmp_path: Path) -> None:
    """Ollama requests against a model reached only through /v1 (like vLLM, TGI or a remote API)."""
    log = tmp_path / "paths.log"
    with bare_llama_server(SMOLLM2, "--embeddings", "--pooling", "mean") as engine:
        port = free_port()
        upstream = subprocess.Popen(
            [sys.executable, str(Path(__file__).parents[1] / "openai_only.py"), engine, str(port), str(log)],
            preexec_fn=die_with_parent,
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/v1/models")
            models = [{"id": "remote-smol", "backend": "remote", "url": f"http://127.0.0.1:{port}"}]
            with running_controller(tmp_path / "ctl", models=models) as ctl:
                client = ollama_client(ctl)
                try:
                    chat = client.chat(
                        model="remote-smol", messages=[{"role": "user", "content": "hi"}], options={"num_predict": 4}
                    )
                    assert chat.message.content and chat.eval_count
                    streamed = list(
                        client.generate(model="remote-smol", prompt="Hi", stream=True, options={"num_predict": 4})
                    )
                    assert streamed[-1].done
                    assert len(client.embed(model="remote-smol", input="x").embeddings[0]) == 576
                finally:
                    client._client.close()
        finally:
            upstream.terminate()
            upstream.wait()
    asked = set(log.read_text().splitlines())
    assert asked <= {"POST /v1/chat/completions", "POST /v1/embeddings", "GET /v1/models"}, asked
    assert "POST /v1/chat/completions" in asked
