"""The passthrough routes (api/openai.py: Passthrough) at the HTTP level: what a raw socket sees
for pipelined, HTTP/1.0, Expect: 100-continue, chunked and forwarded requests."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import h11
import httpx

from tests.harness import SMOLLM2, Controller, model_entry, running_controller


def _post(controller: Controller, path: str, body: dict[str, object], *extra: str, version: str = "1.1") -> bytes:
    data = json.dumps(body).encode()
    lines = [
        f"POST {path} HTTP/{version}",
        f"Host: 127.0.0.1:{controller.port}",
        f"Authorization: Bearer {controller.token()}",
        "Content-Type: application/json",
        f"Content-Length: {len(data)}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def _exchange(controller: Controller, data: bytes) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """Send raw bytes, read answers until the server closes; parse them with h11."""
    with socket.create_connection(("127.0.0.1", controller.port), timeout=60) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    parser = h11.Connection(h11.CLIENT)
    answers: list[tuple[int, dict[bytes, bytes], bytes]] = []
    parser.receive_data(received)
    parser.receive_data(b"")
    while True:
        parser.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        parser.send(h11.EndOfMessage())
        event = parser.next_event()
        if not isinstance(event, h11.Response):
            break
        status, headers, body = event.status_code, dict(event.headers), b""
        while not isinstance(event := parser.next_event(), h11.EndOfMessage):
            assert isinstance(event, h11.Data)
            body += event.data
        answers.append((status, headers, body))
        if parser.our_state is h11.MUST_CLOSE or parser.their_state is h11.MUST_CLOSE:
            break
        parser.start_next_cycle()
    return answers


def test_pipelined_requests_are_answered_in_order(controller: Controller) -> None:
    # Three requests in one write: the second waits behind the first (the server queues it), the
    # third is not a passthrough request at all. Answers must come back in the order asked.
    data = (
        _post(controller, "/tokenize", {"model": "smollm2", "content": "one"})
        + _post(controller, "/tokenize", {"model": "smollm2", "content": "one two three four five"})
        + b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    answers = _exchange(controller, data)
    assert [status for status, _, _ in answers] == [200, 200, 200]
    first, second = (json.loads(body)["tokens"] for _, _, body in answers[:2])
    assert len(first) < len(second)
    assert json.loads(answers[2][2]) == {"status": "ok"}


def test_http10_client_gets_a_length_not_chunks(controller: Controller) -> None:
    request = _post(controller, "/tokenize", {"model": "smollm2", "content": "hi"}, version="1.0")
    [(status, headers, body)] = _exchange(controller, request)
    assert status == 200 and b"transfer-encoding" not in headers
    assert int(headers[b"content-length"]) == len(body) and json.loads(body)["tokens"]


def test_expect_continue_and_keep_alive(controller: Controller) -> None:
    body = json.dumps({"model": "smollm2", "content": "hello"}).encode()
    head = _post(controller, "/tokenize", {"model": "smollm2", "content": "hello"}, "Expect: 100-continue")
    head = head[: -len(body)]
    with socket.create_connection(("127.0.0.1", controller.port), timeout=60) as sock:
        sock.sendall(head)
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue\r\n")
        sock.sendall(body)
        sock.sendall(_post(controller, "/tokenize", {"model": "smollm2", "content": "again"}, "Connection: close"))
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.count(b"HTTP/1.1 200 OK\r\n") == 2  # both on one connection


def test_chunked_body_and_bad_json(controller: Controller) -> None:
    with httpx.Client(base_url=controller.url, headers=controller.headers(), timeout=60) as client:

        def chunks() -> Iterator[bytes]:
            yield b'{"model": "smollm2", '
            yield b'"content": "hi"}'

        chunked = client.post("/tokenize", content=chunks())  # no Content-Length
        assert chunked.status_code == 200 and chunked.json()["tokens"]
        broken = client.post("/tokenize", content=b"{nope")
        assert broken.status_code == 400 and broken.json()["error"]["type"] == "invalid_request_error"


def _forwarded_ip(ctl: Controller, request_id: str) -> str:
    headers = {**ctl.headers(), "X-Forwarded-For": "203.0.113.7", "X-Request-ID": request_id}
    with httpx.Client(base_url=ctl.url, timeout=60) as client:
        reply = client.post("/tokenize", json={"model": "smollm2", "content": "hi"}, headers=headers)
        assert reply.status_code == 200 and reply.headers["x-request-id"] == request_id
    row = ctl.usage_row(lambda r: r["request_id"] == request_id)
    assert row["endpoint"] == "/tokenize" and row["status"] == 200
    return str(row["client_ip"])


def test_forwarded_for_is_ignored_unless_the_peer_is_a_configured_proxy(controller: Controller, tmp_path: Path) -> None:
    # Default: no proxy is trusted, so a local caller cannot forge its address in the logs.
    assert _forwarded_ip(controller, "wire-forwarded-0") == "127.0.0.1"
    models = [model_entry("smollm2-135m", SMOLLM2, aliases=["smollm2"])]
    with running_controller(tmp_path, models=models, auth={"trusted_proxies": ["127.0.0.1"]}) as ctl:
        assert _forwarded_ip(ctl, "wire-forwarded-1") == "203.0.113.7"


def test_empty_or_malformed_credentials_are_401_in_openai_shape(controller: Controller) -> None:
    data = json.dumps({"model": "smollm2", "content": "hi"}).encode()
    for credential in ("X-API-Key: ", "Authorization: Basic abc", "Authorization: Bearer lc_nope"):
        head = f"POST /tokenize HTTP/1.1\r\nHost: x\r\n{credential}\r\nContent-Length: {len(data)}\r\n"
        [(status, _, body)] = _exchange(controller, (head + "Connection: close\r\n\r\n").encode() + data)
        assert status == 401, (credential, body)
        assert json.loads(body)["error"]["type"] == "authentication_error"


# ------------------------------------------- one front door for both kinds of route

Answer = tuple[bool, int, dict[bytes, bytes]]  # (100 Continue seen, status, headers)


def _ask(
    controller: Controller, path: str, credential: str | None, body: bytes, *, declared: int, expect: bool
) -> Answer:
    """One request on its own connection. With Expect: 100-continue the body goes only after the
    server asks for it; a body it refuses unread (or an oversize one) is never sent."""
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{controller.port}", "Content-Type: application/json"]
    lines += [credential] if credential else []
    lines += [f"Content-Length: {declared}", "Connection: close"]
    lines += ["Expect: 100-continue"] if expect else []
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    sendable = declared == len(body)
    continued = False
    with socket.create_connection(("127.0.0.1", controller.port), timeout=60) as sock:
        sock.sendall(head if expect or not sendable else head + body)
        received = b""
        if expect:
            received = sock.recv(65536)
            if received.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"):
                continued, received = True, received[len(b"HTTP/1.1 100 Continue\r\n\r\n") :]
                sock.sendall(body)
        while chunk := sock.recv(65536):
            received += chunk
    parser = h11.Connection(h11.CLIENT)
    parser.send(h11.Request(method="POST", target="/", headers=[("Host", "x"), ("Content-Length", "0")]))
    parser.send(h11.EndOfMessage())
    parser.receive_data(received)
    event = parser.next_event()
    assert isinstance(event, h11.Response), received[:200]
    # Date changes by the second; Content-Length follows the dialect's error body (the shapes differ
    # on purpose: OpenAI's envelope, Ollama's {"error": ...}).
    # Each answer has its own request id: compared by presence, not value.
    headers = {
        k: v if k != b"x-request-id" else b"<id>" for k, v in event.headers if k not in (b"date", b"content-length")
    }
    return continued, event.status_code, headers


def test_a_passthrough_route_and_a_fastapi_route_answer_the_front_door_matrix_alike(controller: Controller) -> None:
    # /v1/chat/completions is served by the passthrough dispatcher, /api/chat by a FastAPI route:
    # the same credentials, body sizes and Expect headers must get the same statuses and headers.
    valid = controller.token()
    manage_only = controller.token("manage-only", "admin", "--scope", "models:manage")
    credentials = {
        "none": (None, 401),
        "empty X-API-Key": ("X-API-Key: ", 401),
        "basic": ("Authorization: Basic YWRtaW46eA==", 401),
        "unknown token": ("Authorization: Bearer lc_not-a-token", 401),
        "no inference scope": (f"Authorization: Bearer {manage_only}", 403),
        "valid": (f"Authorization: Bearer {valid}", 404),  # the model does not exist
        "valid X-API-Key": (f"X-API-Key: {valid}", 404),
    }
    body = json.dumps({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}).encode()
    oversize = 32 * 1024 * 1024 + 1
    compared = 0
    for name, (credential, status) in credentials.items():
        for declared, wanted in ((len(body), status), (oversize, 413)):
            for expect in (False, True):
                answers = [
                    _ask(controller, path, credential, body, declared=declared, expect=expect)
                    for path in ("/v1/chat/completions", "/api/chat")
                ]
                case = (name, declared, expect)
                assert answers[0] == answers[1], case
                continued, got, headers = answers[0]
                assert got == wanted, case
                # 100 Continue only for a body the front door let through: never before the credential.
                assert continued == (expect and wanted == 404), case
                assert headers[b"content-type"] == b"application/json", case
                assert (b"www-authenticate" in headers) == (wanted == 401), case
                compared += 1
    assert compared == len(credentials) * 4
