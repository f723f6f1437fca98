"""A peer LlamaController as a `remote` upstream: the first multi-node story.

B1 and B2 are two controllers sharing one database (so one API token works on both), each serving
SmolLM2 with llama.cpp. A knows the model as `peer`, routed to B1 and B2 with that token (taken
from an environment variable), under B's name for it. Stopping B1 moves A's requests to B2;
stopping B2 too leaves A's model failed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.harness import Controller, default_models, running_controller, start_controller

pytestmark = pytest.mark.slow


def peer_status(a: Controller) -> dict[str, Any]:
    with a.client() as client:
        return next(m for m in client.get("/api/v1/models/status").json()["models"] if m["id"] == "peer")


def wait_for(check: Any, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def ask(a: Controller, model: str = "peer") -> Any:
    with openai.OpenAI(base_url=a.url + "/v1", api_key=a.token(), max_retries=0, timeout=60) as client:
        return client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Say hi"}], max_tokens=4
        )


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[tuple[Controller, Controller, Controller, str]]:
    shared_db = {"LLAMACONTROLLER_DATABASE_URL": f"sqlite:///{tmp_path / 'b.db'}"}
    b1 = start_controller(tmp_path / "b1", models=default_models()[:1], extra_env=shared_db)
    b2 = start_controller(tmp_path / "b2", models=default_models()[:1], extra_env=shared_db)
    key = b1.token("peer-link", "admin")
    remote = {
        "id": "peer",
        "backend": "remote",
        "urls": [b1.url, b2.url + "/"],
        "api_key_env": "PEER_KEY",
        "upstream_model": "smollm2",  # B's alias: B resolves it
    }
    try:
        with running_controller(
            tmp_path / "a",
            models=[remote],
            extra_env={"PEER_KEY": key},
            llamacpp={"engines": {"remote_health_interval": 0.3}},
        ) as a:
            yield a, b1, b2, key
    finally:
        b1.stop()
        b2.stop()


def test_a_routes_to_b_with_a_token_and_fails_over_then_fails(
    peers: tuple[Controller, Controller, Controller, str],
) -> None:
    a, b1, b2, key = peers
    answer = ask(a)
    assert answer.choices[0].message.content is not None
    # B1 (first, not busy) answered with the token A holds; the key is shown nowhere on A.
    row = b1.usage_row(lambda r: r["endpoint"] == "/v1/chat/completions")
    assert row["status"] == 200 and row["model"] == "smollm2-135m"
    report = peer_status(a)
    assert report["state"] == "ready" and [u["healthy"] for u in report["upstreams"]] == [True, True]
    with a.client() as client:
        assert key not in client.get("/api/v1/models").text + client.get("/api/v1/models/status").text
    assert key not in a.log()

    b1.stop()
    # The next request finds B1 refusing and moves to B2 at once; the prober marks B1 down.
    assert ask(a).choices[0].message.content is not None
    b2.usage_row(lambda r: r["endpoint"] == "/v1/chat/completions")
    wait_for(lambda: [u["healthy"] for u in peer_status(a)["upstreams"]] == [False, True])
    assert peer_status(a)["state"] == "ready"

    b2.stop()
    wait_for(lambda: peer_status(a)["state"] == "failed")
    assert "no upstream URL is healthy" in peer_status(a)["last_error"]
    with a.client() as client:
        refused = client.post(
            "/v1/chat/completions", json={"model": "peer", "messages": [{"role": "user", "content": "hi"}]}
        )
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "model_start_failed"


def test_a_missing_key_variable_fails_the_model_with_a_clear_message(tmp_path: Path) -> None:
    remote = {"id": "far", "backend": "remote", "url": "http://127.0.0.1:9", "api_key_env": "NOT_SET_ANYWHERE"}
    with running_controller(tmp_path, models=[remote]) as a, a.client() as client:
        response = client.post(
            "/v1/chat/completions", json={"model": "far", "messages": [{"role": "user", "content": "hi"}]}
        )
        assert response.status_code == 503
        assert "NOT_SET_ANYWHERE" in response.json()["error"]["message"]


def test_a_wrong_key_is_a_failed_health_check_not_a_leak(tmp_path: Path) -> None:
    with running_controller(tmp_path / "b", models=default_models()[:1]) as b:
        remote = {"id": "peer", "backend": "remote", "url": b.url, "api_key_env": "PEER_KEY"}
        with running_controller(tmp_path / "a", models=[remote], extra_env={"PEER_KEY": "llc_wrong"}) as a:
            with a.client() as client:
                response = client.post(
                    "/v1/chat/completions", json={"model": "peer", "messages": [{"role": "user", "content": "hi"}]}
                )
            assert response.status_code == 503
            assert "401" in response.json()["error"]["message"] and "llc_wrong" not in response.text
