"""The OpenAI dialect, driven by the official `openai` client against the real controller."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.harness import SMOLLM2, Controller, engine_key, model_entry, running_controller


@pytest.fixture()
def client(controller: Controller) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{controller.url}/v1", api_key=controller.token(), max_retries=0, timeout=120) as c:
        yield c


def test_list_models(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert ids == {"smollm2-135m", "gemma3-270m"}
    assert client.models.retrieve("smollm2").id == "smollm2-135m"


@pytest.mark.parametrize("model", ["smollm2-135m", "smollm2", "smollm2:latest", "gemma3"])
def test_chat_by_id_and_alias(client: openai.OpenAI, model: str) -> None:
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hello"}], max_tokens=8, extra_body={"ignore_eos": True}
    )
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens > 0


def test_chat_stream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="smollm2-135m",
        messages=[{"role": "user", "content": "Count to five"}],
        max_tokens=16,
        stream=True,
        extra_body={"ignore_eos": True},  # the model may otherwise stop after "One."
    )
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 3


def test_completions(client: openai.OpenAI) -> None:
    reply = client.completions.create(
        model="smollm2-135m", prompt="The capital of France is", max_tokens=4, extra_body={"ignore_eos": True}
    )
    assert reply.choices[0].text


def test_stream_headers_and_request_id(controller: Controller) -> None:
    body = {"model": "smollm2-135m", "prompt": "Hi", "max_tokens": 3, "stream": True}
    headers = {**controller.headers(), "X-Request-ID": "req-123"}
    with httpx.stream("POST", f"{controller.url}/v1/completions", json=body, headers=headers, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-accel-buffering"] == "no"
        assert r.headers["cache-control"] == "no-cache"
        assert r.headers["x-request-id"] == "req-123"
        assert "data: [DONE]" in r.read().decode()


def test_embeddings(tmp_path: Path) -> None:
    models = [model_entry("smollm2-embed", SMOLLM2, embedding=True)]
    with running_controller(tmp_path, models=models) as ctl:
        with openai.OpenAI(base_url=f"{ctl.url}/v1", api_key=ctl.token(), max_retries=0) as client:
            result = client.embeddings.create(model="smollm2-embed", input=["hello", "world"])
        assert len(result.data) == 2
        assert len(result.data[0].embedding) == 576  # SmolLM2-135M's hidden size


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_request"),
        (b"[1, 2]", 400, "invalid_request"),
        (b'{"messages": []}', 400, "invalid_request"),
        (b'{"model": "no-such-model", "messages": []}', 404, "model_not_found"),
        (b'{"model": 42}', 400, "invalid_request"),
    ],
)
def test_bad_requests_get_openai_errors(controller: Controller, body: bytes, status: int, code: str) -> None:
    response = httpx.post(
        f"{controller.url}/v1/chat/completions",
        content=body,
        headers={**controller.headers(), "Content-Type": "application/json"},
    )
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code
    assert set(error) == {"message", "type", "param", "code"}


def test_auth_errors_through_the_client(controller: Controller) -> None:
    for key in ("lc_wrong", "garbage"):
        with (
            openai.OpenAI(base_url=f"{controller.url}/v1", api_key=key, max_retries=0) as bad,
            pytest.raises(openai.AuthenticationError),
        ):
            bad.models.list()
    response = httpx.post(f"{controller.url}/v1/chat/completions", json={"model": "smollm2"})
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_model_not_allowed_is_403(controller: Controller) -> None:
    token = controller.token("only-gemma", "admin", "--model", "gemma3-270m")
    with openai.OpenAI(base_url=f"{controller.url}/v1", api_key=token, max_retries=0) as client:
        assert [m.id for m in client.models.list()] == ["gemma3-270m"]
        with pytest.raises(openai.PermissionDeniedError):
            client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "x"}], max_tokens=1)


def test_body_over_the_cap_is_413(controller: Controller) -> None:
    response = httpx.post(
        f"{controller.url}/v1/chat/completions",
        content=b"x" * (33 * 1024 * 1024),
        headers={**controller.headers(), "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_unknown_path_is_an_openai_404(controller: Controller) -> None:
    response = httpx.get(f"{controller.url}/v1/nothing-here", headers=controller.headers())
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_client_disconnect_stops_generation(controller: Controller) -> None:
    with controller.client() as mgmt:
        mgmt.post("/api/v1/models/load", json={"model_id": "smollm2-135m"})
        status = next(m for m in mgmt.get("/api/v1/models/status").json()["models"] if m["id"] == "smollm2-135m")
    port, key = status["port"], engine_key(status["pid"])
    body = {
        "model": "smollm2-135m",
        "prompt": "Write a long story:",
        # Fits the engine's 2,048-cell context even with other slots' prompts cached; ~14 s of work.
        "max_tokens": 1000,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream(
        "POST", f"{controller.url}/v1/completions", json=body, headers=controller.headers(), timeout=60
    ) as r:
        assert r.status_code == 200
        was_busy = False
        for _ in r.iter_lines():
            if _busy(port, key):
                # Check once and stop reading: a second /slots call can catch the slot between
                # two steps and report it idle (seen in CI), which says nothing about us.
                was_busy = True
                break
        assert was_busy
    # The response is closed; the engine must notice within a second.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline and _busy(port, key):
        time.sleep(0.05)
    assert time.monotonic() < deadline
    # ...and stays idle: an uncancelled generation would go on for ~14 s.
    for _ in range(6):
        time.sleep(0.1)
        assert not _busy(port, key)


def _busy(port: int, key: str) -> bool:
    slots = httpx.get(f"http://127.0.0.1:{port}/slots", headers={"Authorization": f"Bearer {key}"}).json()
    return any(slot["is_processing"] for slot in slots)


def test_queue_full_is_429_with_retry_after(tmp_path: Path) -> None:
    models = [model_entry("smollm2-135m", SMOLLM2, max_concurrency=1, queue_timeout=0.5)]
    with running_controller(tmp_path, models=models) as ctl:
        headers = ctl.headers()
        long = {"model": "smollm2-135m", "prompt": "Story:", "max_tokens": 600, "ignore_eos": True}
        worker = threading.Thread(
            target=httpx.post,
            args=(f"{ctl.url}/v1/completions",),
            kwargs={"json": long, "headers": headers, "timeout": 120},
        )
        worker.start()
        # Until the long request holds the only slot (a fixed sleep raced the cold start in CI).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = httpx.get(f"{ctl.url}/api/v1/models/status", headers=headers).json()["models"][0]
            if status["in_flight"] >= 1 and status["state"] == "ready":
                break
            time.sleep(0.05)
        response = httpx.post(f"{ctl.url}/v1/completions", json={**long, "max_tokens": 1}, headers=headers)
        worker.join()
        assert response.status_code == 429
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["error"]["type"] == "rate_limit_error"


def test_silent_engine_is_504(tmp_path: Path) -> None:
    # An upstream that accepts connections and never answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        models = [{"id": "silent", "backend": "remote", "url": url, "request_timeout": 1, "health_path": ""}]
        with running_controller(tmp_path, models=models) as ctl:
            began = time.monotonic()
            response = httpx.post(
                f"{ctl.url}/v1/chat/completions",
                json={"model": "silent", "messages": []},
                headers=ctl.headers(),
                timeout=30,
            )
            assert response.status_code == 504
            assert response.json()["error"]["code"] == "upstream_timeout"
            assert time.monotonic() - began < 5


def test_unreachable_engine_is_502(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"  # bound, not listening: refused
        with running_controller(
            tmp_path, models=[{"id": "gone", "backend": "remote", "url": url, "health_path": ""}]
        ) as ctl:
            response = httpx.post(
                f"{ctl.url}/v1/completions", json={"model": "gone", "prompt": "x"}, headers=ctl.headers()
            )
            assert response.status_code == 502
            assert response.json()["error"]["type"] == "server_error"


def test_answer_cut_short_ends_the_connection(tmp_path: Path) -> None:
    # An upstream promising 100 bytes and closing after 10: the client must see the answer end
    # with the connection, not have an in-band error spliced into a Content-Length body.
    with socket.socket() as short:
        short.bind(("127.0.0.1", 0))
        short.listen(16)

        def serve() -> None:
            conn, _ = short.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
                time.sleep(0.1)
                conn.sendall(b'{"tokens":')

        threading.Thread(target=serve, daemon=True).start()
        url = f"http://127.0.0.1:{short.getsockname()[1]}"
        with running_controller(
            tmp_path, models=[{"id": "short", "backend": "remote", "url": url, "health_path": ""}]
        ) as ctl:
            with pytest.raises(httpx.RemoteProtocolError):
                httpx.post(f"{ctl.url}/tokenize", json={"model": "short"}, headers=ctl.headers(), timeout=30)
            # the controller is fine afterwards
            assert httpx.get(f"{ctl.url}/health", timeout=5).status_code == 200
