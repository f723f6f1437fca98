"""What a hostile caller gets out of the controller: each test is named for the hole it guards.

The threat model and the test behind each of its lines: docs/SECURITY.md.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.harness import SMOLLM2, Controller, engine_key, model_entry, running_controller

TEN_MB = 10 * 1024 * 1024


def status_of(controller: Controller, model: str) -> dict[str, object]:
    with controller.client() as admin:
        return next(m for m in admin.get("/api/v1/models/status").json()["models"] if m["id"] == model)


# ---------------------------------------------------------------------------------- tokens


def test_narrow_token_cannot_mint_broader_token(controller: Controller) -> None:
    narrow = controller.token("narrow", "admin", "--scope", "inference", "--model", "smollm2-135m")
    with controller.client(narrow) as client:
        minted = client.post("/api/v1/tokens", json={"name": "x"})
        assert minted.status_code == 201, minted.text
        assert minted.json()["scopes"] == ["inference"] and minted.json()["models"] == ["smollm2-135m"]
        for broader in ({"scopes": ["admin"]}, {"models": ["gemma3-270m"]}, {"trusted_frontend": True}):
            refused = client.post("/api/v1/tokens", json={"name": "y", **broader})
            assert refused.status_code == 403, (broader, refused.text)
            assert set(refused.json()["error"]) == {"code", "message"}
        assert client.get("/api/v1/audit").status_code == 403
    with controller.client(minted.json()["token"]) as child:
        assert child.get("/api/v1/audit").status_code == 403
        assert child.post("/api/v1/models/load", json={"model_id": "smollm2-135m"}).status_code == 403


def test_a_token_cannot_outlive_the_token_that_minted_it(controller: Controller) -> None:
    brief = controller.token("brief", "admin", "--expires-in", "1h")
    with controller.client(brief) as client:
        assert client.post("/api/v1/tokens", json={"name": "z", "expires_in": "2h"}).status_code == 403
        child = client.post("/api/v1/tokens", json={"name": "z"}).json()
        assert child["expires_at"] is not None


def test_model_restriction_holds_on_management_routes(controller: Controller) -> None:
    token = controller.token("gemma-manager", "admin", "--scope", "models:manage", "--model", "gemma3-270m")
    with controller.client(token) as client:
        assert client.post("/api/v1/models/unload", json={"model_id": "smollm2"}).status_code == 403
        assert client.get("/api/v1/models/smollm2-135m/logs").status_code == 403
        assert client.post("/api/v1/models/switch", json={"to_id": "gemma3"}).status_code == 403
        listed = [m["id"] for m in client.get("/api/v1/models/status").json()["models"]]
        assert listed == ["gemma3-270m"]


def test_inference_tokens_see_no_paths_or_flags(controller: Controller) -> None:
    token = controller.token("reader", "admin", "--scope", "inference")
    with controller.client(token) as client:
        models = client.get("/api/v1/models").json()["models"]
        assert models and all("path" not in m and "args" not in m and "url" not in m for m in models)
        shown = client.post("/api/show", json={"model": "smollm2"}).json()
        assert str(SMOLLM2) not in json.dumps(shown) and shown["modelfile"] == "FROM smollm2-135m\n"


# ------------------------------------------------------------------------ model lifetimes


def test_inference_token_cannot_unload_or_pin_a_shared_model(controller: Controller) -> None:
    token = controller.token("webui-like", "admin", "--scope", "inference")
    chat = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    with controller.client(token) as client:
        answered = client.post("/api/chat", json={**chat, "keep_alive": 0, "options": {"num_predict": 1}})
        assert answered.status_code == 200 and answered.json()["done"] is True  # served as usual
        assert status_of(controller, "smollm2-135m")["state"] == "ready"
        for keep_alive in (0, -1, "1h"):
            loaded = client.post("/api/generate", json={"model": "smollm2", "prompt": "", "keep_alive": keep_alive})
            assert loaded.status_code == 200 and loaded.json()["done_reason"] == "load"
        assert status_of(controller, "smollm2-135m")["state"] == "ready"
    with controller.client() as admin:
        unload = admin.post("/api/generate", json={"model": "smollm2", "prompt": "", "keep_alive": 0})
        assert unload.json()["done_reason"] == "unload"
        assert status_of(controller, "smollm2-135m")["state"] == "stopped"
        audited = admin.get("/api/v1/audit", params={"action": "model.keep_alive"}).json()["entries"]
        assert audited and audited[0]["target"] == "smollm2-135m" and audited[0]["after"] == {"keep_alive": 0}


def test_fifty_digit_keep_alive_is_a_fast_400(controller: Controller) -> None:
    body = {"model": "smollm2", "prompt": "", "keep_alive": "1" * 50 + "x"}
    with controller.client() as client:
        client.get("/api/version")  # connected and warm
        began = time.perf_counter()
        refused = client.post("/api/generate", json=body)
        took = time.perf_counter() - began
    assert refused.status_code == 400 and "keep_alive" in refused.json()["error"]
    assert took < 0.05, f"{took * 1000:.0f} ms"


# --------------------------------------------------------------------------- body limits


def _head_only(controller: Controller, head: str) -> tuple[int, bytes]:
    """Send a request's head promising a 10 MB body, send none of it, read the answer."""
    with socket.create_connection(("127.0.0.1", controller.port), timeout=10) as sock:
        sock.sendall(head.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1]), data


FAMILIES = {  # path -> what an unauthenticated caller gets before sending its body
    "/v1/chat/completions": 401,  # inference routes take up to 32 MiB, from token holders
    "/tokenize": 401,
    "/api/chat": 401,
    "/api/v1/tokens": 413,  # management and dashboard: 1 MiB, login and the rest: 64 KiB
    "/api/v1/models/load": 413,
    "/ui/tokens": 413,
    "/ui/login": 413,
    "/nothing-here": 413,
}


def test_oversized_bodies_are_refused_before_they_are_read(controller: Controller) -> None:
    rss_before = psutil.Process(controller.proc.pid).memory_info().rss
    for path, want in FAMILIES.items():
        for extra in ("Expect: 100-continue\r\n", ""):
            head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {TEN_MB}\r\n{extra}\r\n"
            status, raw = _head_only(controller, head)
            assert status == want, (path, raw[:200])  # never "100 Continue" first
        # A chunked body has no length to check up front: refused all the same, unread.
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        with socket.create_connection(("127.0.0.1", controller.port), timeout=10) as sock:
            sock.sendall(head.encode())
            try:
                for _ in range(10):
                    sock.sendall(b"%x\r\n%s\r\n" % (1024 * 1024, b"x" * 1024 * 1024))
            except OSError:
                pass  # the controller answered and closed: fine
            answer = sock.recv(4096)
        assert int(answer.split(b" ", 2)[1]) in (want, 401, 411), (path, answer[:200])
    grown = psutil.Process(controller.proc.pid).memory_info().rss - rss_before
    assert grown < 5 * 1024 * 1024, f"controller RSS grew by {grown / 2**20:.1f} MiB"


def test_a_token_holder_gets_413_for_an_oversized_body(controller: Controller) -> None:
    token = controller.token()
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
    status, raw = _head_only(controller, head + f"Content-Length: {40 * 1024 * 1024}\r\n\r\n")
    assert status == 413 and b"application/json" in raw
    management = f"POST /api/v1/tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
    status, raw = _head_only(controller, management + "Content-Length: 2000000\r\n\r\n")
    assert status == 413 and b"application/json" in raw


# ------------------------------------------------------------------------------ engines


def test_a_local_process_connecting_straight_to_an_engine_is_refused(controller: Controller) -> None:
    with controller.client() as admin:
        assert admin.post("/api/v1/models/load", json={"model_id": "gemma3"}).status_code == 200
    status = status_of(controller, "gemma3-270m")
    engine = f"http://127.0.0.1:{status['port']}"
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    assert httpx.post(f"{engine}/v1/chat/completions", json=chat).status_code == 401
    assert httpx.get(f"{engine}/slots").status_code == 401
    assert httpx.get(f"{engine}/metrics").status_code == 401
    # Only the controller knows the key (and a process of the same user, which can read its environment).
    key = engine_key(int(str(status["pid"])))
    assert httpx.get(f"{engine}/slots", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert key not in " ".join(psutil.Process(int(str(status["pid"]))).cmdline())


def test_engines_do_not_inherit_the_controllers_secrets(controller: Controller) -> None:
    with controller.client() as admin:
        admin.post("/api/v1/models/load", json={"model_id": "gemma3"})
    environ = psutil.Process(int(str(status_of(controller, "gemma3-270m")["pid"]))).environ()
    assert "LLAMACONTROLLER_ADMIN_PASSWORD" not in environ and "LLAMACONTROLLER_PORT" not in environ
    assert controller.admin_password not in json.dumps(environ)


# ------------------------------------------------------------------------ request input


def test_remote_media_urls_are_refused(controller: Controller) -> None:
    image = {"type": "image_url", "image_url": {"url": "http://169.254.169.254/latest/meta-data/"}}
    body = {"model": "smollm2", "messages": [{"role": "user", "content": [{"type": "text", "text": "?"}, image]}]}
    with controller.client() as client:
        refused = client.post("/v1/chat/completions", json=body)
    assert refused.status_code == 400 and "data: URIs" in refused.json()["error"]["message"]


def test_a_huge_model_name_is_not_echoed(controller: Controller) -> None:
    with controller.client() as client:
        refused = client.post("/v1/chat/completions", json={"model": "m" * 100_000, "messages": []})
    assert refused.status_code == 404 and len(refused.content) < 1000


def test_openwebui_user_headers_need_a_trusted_frontend_token(controller: Controller) -> None:
    plain = controller.token("plain-frontend", "admin", "--scope", "inference")
    trusted = controller.token("trusted-frontend", "admin", "--scope", "inference", "--trusted-frontend")
    body = {"model": "smollm2", "content": "who"}
    for token, request_id in ((plain, "owui-plain"), (trusted, "owui-trusted")):
        headers = {"Authorization": f"Bearer {token}", "X-OpenWebUI-User-Name": "mallory", "X-Request-ID": request_id}
        assert httpx.post(f"{controller.url}/tokenize", json=body, headers=headers).status_code == 200
    assert controller.usage_row(lambda r: r["request_id"] == "owui-plain")["client_user"] is None
    assert controller.usage_row(lambda r: r["request_id"] == "owui-trusted")["client_user"] == {"name": "mallory"}


# ------------------------------------------------------------------------ anonymous mode


@pytest.fixture(scope="module")
def anonymous(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    root = tmp_path_factory.mktemp("anonymous")
    models = [model_entry("smollm2-135m", SMOLLM2, aliases=["smollm2"])]
    with running_controller(root, models=models, auth={"require_api_token": False}) as ctl:
        yield ctl


def test_anonymous_mode_refuses_a_foreign_host(anonymous: Controller) -> None:
    rebound = httpx.get(f"{anonymous.url}/api/tags", headers={"Host": "evil.example"})
    assert rebound.status_code == 400 and "not allowed" in rebound.json()["error"]
    assert httpx.get(f"{anonymous.url}/api/tags").status_code == 200  # localhost itself


def test_anonymous_mode_refuses_a_cross_origin_post(anonymous: Controller) -> None:
    body = {"model": "smollm2"}
    page = {"Origin": "https://evil.example", "Content-Type": "text/plain"}
    refused = httpx.post(f"{anonymous.url}/api/show", content=json.dumps(body), headers=page)
    assert refused.status_code == 403 and "cross-origin" in refused.json()["error"]
    site = httpx.post(f"{anonymous.url}/api/show", json=body, headers={"Sec-Fetch-Site": "cross-site"})
    assert site.status_code == 403
    same = httpx.post(f"{anonymous.url}/api/show", json=body, headers={"Origin": anonymous.url})
    assert same.status_code == 200
    assert httpx.get(f"{anonymous.url}/api/v1/models").status_code == 401  # management: never anonymous


# ---------------------------------------------------------------- a hostile remote upstream


class _Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    requests = 0

    def do_POST(self) -> None:
        type(self).requests += 1
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.path.startswith("/close"):
            self.close_connection = True  # gone before any answer: it may have generated
            return
        self.send_response_only(103)  # an interim answer first: not the answer
        self.send_header("Link", "</x>; rel=preload")
        self.end_headers()
        body = json.dumps({"id": "x", "object": "chat.completion", "choices": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Set-Cookie", "lc_session=stolen; Path=/")
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("X-Frame-Options", "ALLOWALL")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_remote_upstream_cannot_set_headers_or_get_a_request_twice(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    models = [
        {"id": "hostile", "backend": "remote", "url": url, "health_path": ""},
        {"id": "closer", "backend": "remote", "url": url + "/close", "health_path": ""},
    ]
    try:
        with running_controller(tmp_path, models=models) as ctl, ctl.client() as client:
            body = {"messages": [{"role": "user", "content": "hi"}]}
            answer = client.post("/v1/chat/completions", json={"model": "hostile", **body})
            assert answer.status_code == 200 and answer.json()["id"] == "x"
            assert not {"set-cookie", "access-control-allow-origin", "x-frame-options", "link"} & set(answer.headers)
            _Upstream.requests = 0
            failed = client.post("/v1/chat/completions", json={"model": "closer", **body})
            assert failed.status_code == 502
            assert _Upstream.requests == 1  # never replayed
    finally:
        server.shutdown()
        server.server_close()
