"""Two controllers behind one nginx upstream, sharing PostgreSQL, Redis and a data dir: a token
revoked on one is refused by the other within a second, one rate limit counts requests on both,
a login lockout holds on both, and neither reaps the other's engines."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.harness import SMOLLM2, Controller, free_port, model_entry, start_controller, wait_no_engines
from tests.proxies import run_nginx, self_signed, trust
from tests.servers import create_database, redis_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pair(postgres: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Controller, Controller]]:
    root = tmp_path_factory.mktemp("instances")
    with redis_server(root / "redis") as redis_url:
        shared = {
            "LLAMACONTROLLER_DATABASE_URL": create_database(postgres, f"lc_pair_{secrets.token_hex(4)}"),
            "LLAMACONTROLLER_REDIS_URL": redis_url,
            "LLAMACONTROLLER_DATA_DIR": str(root / "a" / "data"),  # one data dir (and cookie key) for both
        }
        config = {"models": [model_entry("smollm2-135m", SMOLLM2)], "auth": {"lockout_threshold": 3}}
        a = start_controller(root / "a", extra_env=shared, **config)
        try:
            with a.client() as client:
                loaded = client.post("/api/v1/models/load", json={"model_id": "smollm2-135m"})
                assert loaded.status_code == 200
            engine_of_a = loaded.json()["pid"]
            b = start_controller(root / "b", extra_env=shared, **config)
            try:
                # B started on A's data dir: it reaped nothing of A's.
                assert psutil.pid_exists(engine_of_a) and "killing engine" not in b.log()
                yield a, b
            finally:
                b.stop()
        finally:
            a.stop()
            wait_no_engines(root / "a" / "data")


def test_a_token_revoked_on_one_is_refused_by_the_other_within_a_second(
    pair: tuple[Controller, Controller], tmp_path: Path
) -> None:
    a, b = pair
    with a.client() as admin:
        created = admin.post("/api/v1/tokens", json={"name": "to-revoke", "user": "admin"}).json()
    token = created["token"]
    headers = {"Authorization": f"Bearer {token}"}
    cert = self_signed(tmp_path)
    port = free_port()
    (tmp_path / "nginx").mkdir()
    with (
        run_nginx(tmp_path / "nginx", "", port, [a.port, b.port], cert) as ca,
        httpx.Client(base_url=f"https://localhost:{port}", verify=trust(ca), headers=headers) as client,
    ):
        # Round robin: both instances verify (and cache) the token.
        assert all(client.get("/v1/models").status_code == 200 for _ in range(6))
        with httpx.Client(base_url=b.url, headers=headers) as direct:
            assert direct.get("/v1/models").status_code == 200  # cached on B now
        with a.client() as admin:
            assert admin.delete(f"/api/v1/tokens/{created['id']}").status_code == 200
        time.sleep(1.0)
        assert [client.get("/v1/models").status_code for _ in range(6)] == [401] * 6
        with httpx.Client(base_url=b.url, headers=headers) as direct:
            assert direct.get("/v1/models").status_code == 401
    assert "GET /v1/models" in a.log() and "GET /v1/models" in b.log()  # nginx used both


def test_one_rate_limit_counts_requests_on_both(pair: tuple[Controller, Controller]) -> None:
    a, b = pair
    with a.client() as admin:
        token = admin.post("/api/v1/tokens", json={"name": "limited", "user": "admin", "rpm_limit": 4}).json()["token"]
    body = {"model": "smollm2-135m", "prompt": "Hi", "max_tokens": 1}
    statuses = []
    for ctl in (a, b, a, b, a, b):
        with httpx.Client(base_url=ctl.url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as client:
            statuses.append(client.post("/v1/completions", json=body).status_code)
    assert statuses == [200, 200, 200, 200, 429, 429]


def test_a_lockout_holds_on_both(pair: tuple[Controller, Controller]) -> None:
    a, b = pair

    def attempt(ctl: Controller, password: str) -> int:
        with httpx.Client(base_url=ctl.url) as browser:
            page = browser.get("/ui/login")
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
            form = {"username": "admin", "password": password, "csrf_token": csrf}
            return browser.post("/ui/login", data=form).status_code

    assert [attempt(ctl, "wrong-password") for ctl in (a, b, a)] == [401, 401, 401]
    assert attempt(b, a.admin_password) == 429  # locked out on B by failures counted on both
    assert attempt(a, a.admin_password) == 429
