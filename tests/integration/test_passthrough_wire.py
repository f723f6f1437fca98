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
