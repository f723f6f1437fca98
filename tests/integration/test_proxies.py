"""The shipped proxy configs (deploy/nginx, deploy/caddy), run by real nginx and Caddy over TLS
in front of a real controller, at the root and under /llm/: tokens stream through unbuffered,
the dashboard's live view (SSE) works, the session cookie is Secure, the client's address is
the one recorded, security headers survive the sub-path, and body limits hold."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.harness import SMOLLM2, Controller, free_port, model_entry, running_controller
from tests.proxies import run_caddy, run_nginx, self_signed, trust

pytestmark = pytest.mark.slow

CLIENT_IP = "127.0.0.2"  # the test's client connects to the proxy from here; the proxy itself from 127.0.0.1


@dataclass
class Proxied:
    ctl: Controller
    base: str  # https://localhost:PORT/llm (no trailing slash)
    ca: str  # the certificate to trust
    kind: str
    prefix: str

    def client(self, **kwargs: object) -> httpx.Client:
        transport = httpx.HTTPTransport(local_address=CLIENT_IP, verify=trust(self.ca))
        return httpx.Client(base_url=self.base, transport=transport, timeout=60, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module", params=["", "/llm"], ids=["root", "subpath"])
def controller_at(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    root = tmp_path_factory.mktemp("proxied")
    with running_controller(
        root,
        models=[model_entry("smollm2-135m", SMOLLM2)],
        # Anonymous inference allowed: management (/api/v1) must still refuse anonymous callers,
        # at the root and under the sub-path alike.
        auth={"trusted_proxies": ["127.0.0.1"], "require_api_token": False},
        extra_env={"LLAMACONTROLLER_ROOT_PATH": request.param},
    ) as ctl:
        ctl.prefix = request.param  # type: ignore[attr-defined]
        yield ctl


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module", params=["nginx", "caddy"])
def proxied(
    request: pytest.FixtureRequest,
    controller_at: Controller,
    certificate: tuple[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Proxied]:
    prefix: str = controller_at.prefix  # type: ignore[attr-defined]
    folder = tmp_path_factory.mktemp(request.param)
    port = free_port()
    runner = run_nginx if request.param == "nginx" else run_caddy
    with runner(folder, prefix, port, controller_at.port, certificate) as ca:
        yield Proxied(controller_at, f"https://localhost:{port}{prefix}", ca, request.param, prefix)


def login(client: httpx.Client, password: str) -> httpx.Response:
    page = client.get("/ui/login")
    assert page.status_code == 200, page.text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    return client.post("/ui/login", data={"username": "admin", "password": password, "csrf_token": csrf})


def test_tokens_stream_through_unbuffered(proxied: Proxied) -> None:
    body = {
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": "Count to a hundred."}],
        "max_tokens": 120,
        "ignore_eos": True,
        "stream": True,
    }
    with proxied.client(headers=proxied.ctl.headers()) as client:
        assert client.get("/health").json()["status"] == "ok"
        began = time.perf_counter()
        stamps = []
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: "):
                    stamps.append(time.perf_counter() - began)
        assert len(stamps) > 100
        # The first token arrived well before the stream ended: nothing buffered it.
        assert stamps[-1] - stamps[0] > 0.3, f"first at {stamps[0]:.2f}s, last at {stamps[-1]:.2f}s"


def test_body_limits_hold_through_the_proxy(proxied: Proxied) -> None:
    with proxied.client(headers=proxied.ctl.headers()) as client:
        # Over the proxy's 32 MiB: refused by the proxy, never passed on.
        with contextlib.suppress(httpx.TransportError):  # it may also close while the body is sent
            refused = client.post(
                "/v1/chat/completions", content=b"x" * (33 * 1024 * 1024), headers={"content-type": "application/json"}
            )
            assert refused.status_code == 413
        # Over the controller's 1 MiB for management routes: the controller's own JSON error.
        refused = client.post(
            "/api/v1/tokens",
            content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
            headers={"content-type": "application/json"},
        )
        assert refused.status_code == 413 and "KiB" in refused.json()["error"]["message"]


def test_dashboard_through_the_proxy(proxied: Proxied) -> None:
    ctl = proxied.ctl
    with proxied.client() as browser:
        # Security headers on the dashboard, under the sub-path too; anonymous API callers refused.
        page = browser.get("/ui/login")
        for name in ("content-security-policy", "x-frame-options", "x-content-type-options"):
            assert name in page.headers, (name, dict(page.headers))
        assert f'action="{proxied.prefix}/ui/login"' in page.text
        assert browser.get("/api/v1/models").status_code == 401
        assert browser.get("/v1/models").status_code == 200  # anonymous mode is on: inference is open
        assert browser.get("/static/app.js").headers["x-content-type-options"] == "nosniff"
        if proxied.prefix:  # the bare prefix leads to the dashboard
            bare = browser.get(proxied.base.removesuffix(proxied.prefix) + proxied.prefix)
            assert bare.status_code == 301 and bare.headers["location"].endswith(f"{proxied.prefix}/")

        # Log in, with a forged X-Forwarded-For that the proxy must not pass on as ours.
        browser.headers["X-Forwarded-For"] = "203.0.113.7"
        answer = login(browser, ctl.admin_password)
        assert answer.status_code == 303 and answer.headers["location"] == f"{proxied.prefix}/ui/"
        cookie = re.search(r"lc_session=[^;]+;([^\n]*)", answer.headers["set-cookie"])
        assert cookie is not None and "Secure" in cookie.group(1) and f"Path={proxied.prefix or '/'}" in cookie.group(1)
        assert browser.get("/ui/").status_code == 200

        # The login was recorded with the client's own address.
        with ctl.client() as admin:
            entry = admin.get("/api/v1/audit", params={"action": "login.success"}).json()["entries"][0]
        assert entry["client_ip"] == CLIENT_IP

        # The live view: the dashboard's SSE stream, with the session cookie, through the proxy.
        events: list[str] = []
        with browser.stream("GET", "/api/v1/events", timeout=30) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            with ctl.client() as admin:
                target = (
                    "unload"
                    if any(s["state"] == "ready" for s in admin.get("/api/v1/models/status").json()["models"])
                    else "load"
                )
                assert admin.post(f"/api/v1/models/{target}", json={"model_id": "smollm2-135m"}).status_code == 200
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    events.append(line)
                    if "model_state" in line:
                        break
        assert any("smollm2-135m" in e for e in events)
