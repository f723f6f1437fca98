"""Users, tokens, scopes, sessions, lockout, audit and usage — on SQLite and on PostgreSQL."""

from __future__ import annotations

import contextlib
import re
import secrets
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.harness import SMOLLM2, Controller, model_entry, running_controller

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


def _postgres_available() -> bool:
    try:
        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def gov(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    """A controller with one model, on a fresh database of each kind."""
    env: dict[str, str] = {}
    database = None
    if request.param == "postgresql":
        # CI has PostgreSQL (see the env notes); not having it is a failure, not a skip.
        assert _postgres_available(), f"PostgreSQL is not reachable at {PG_ADMIN}"
        database = f"lc_test_{secrets.token_hex(4)}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {database}")
        env["LLAMACONTROLLER_DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:5432/{database}"
    root = tmp_path_factory.mktemp(f"gov-{request.param}")
    try:
        with running_controller(
            root,
            models=[model_entry("smollm2-135m", SMOLLM2, max_concurrency=16), model_entry("other", SMOLLM2)],
            extra_env=env,
        ) as ctl:
            ctl.cli("users", "create", "olive", "--role", "operator", "--password-stdin", stdin="olive-password\n")
            ctl.cli("users", "create", "ursula", "--role", "user", "--password-stdin", stdin="ursula-password\n")
            yield ctl
    finally:
        if database:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def tokens(ctl: Controller) -> dict[str, str | None]:
    """One credential per row of the auth matrix."""
    expired = ctl.token("expired", "admin", "--expires-in", "1s")
    revoked = ctl.token("revoked", "admin")
    with ctl.client() as admin:
        listed = admin.get("/api/v1/tokens").json()["tokens"]
    token_id = next(t["id"] for t in listed if t["name"] == "revoked")
    ctl.cli("tokens", "revoke", str(token_id))
    time.sleep(1.1)
    return {
        "none": None,
        "malformed": "Basic abc",
        "unknown": "lc_" + "x" * 43,
        "expired": expired,
        "revoked": revoked,
        "user-role": ctl.token("ursula", "ursula"),
        "operator": ctl.token("olive", "olive"),
        "other-model-only": ctl.token("other-only", "admin", "--model", "other"),
        "valid": ctl.token(),
    }


# route, method, body, dialect, required scope
ROUTES = [
    (
        "/v1/chat/completions",
        "POST",
        {"model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
        "openai",
        "inference",
    ),
    ("/v1/models", "GET", None, "openai", "inference"),
    ("/tokenize", "POST", {"model": "smollm2-135m", "content": "hi"}, "openai", "inference"),
    (
        "/api/chat",
        "POST",
        {
            "model": "smollm2-135m",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": False,
            "options": {"num_predict": 1},
        },
        "ollama",
        "inference",
    ),
    ("/api/tags", "GET", None, "ollama", "inference"),
    ("/api/v1/models/status", "GET", None, "management", "models:manage"),
    ("/api/v1/models/load", "POST", {"model_id": "smollm2-135m"}, "management", "models:manage"),
    ("/api/v1/users", "GET", None, "management", "admin"),
    ("/api/v1/audit", "GET", None, "management", "admin"),
    ("/api/v1/usage", "GET", None, "management", "admin"),
]
MODEL_ROUTES = {"/v1/chat/completions", "/tokenize", "/api/chat"}


def expected(credential: str, route: str, scope: str) -> int:
    if credential in ("none", "malformed", "unknown", "expired", "revoked"):
        return 401
    if credential == "user-role" and scope != "inference":
        return 403
    if credential == "operator" and scope == "admin":
        return 403
    if credential == "other-model-only" and route in MODEL_ROUTES:
        return 403
    return 200


def error_shape(dialect: str, body: dict) -> bool:
    if dialect == "ollama":
        return isinstance(body.get("error"), str)
    if dialect == "openai":
        return set(body["error"]) == {"message", "type", "param", "code"}
    return set(body["error"]) == {"code", "message"}


def test_auth_matrix(gov: Controller) -> None:
    creds = tokens(gov)
    failures = []
    for route, method, body, dialect, scope in ROUTES:
        for name, credential in creds.items():
            headers = {}
            if credential is not None:
                headers["Authorization"] = credential if " " in credential else f"Bearer {credential}"
            response = httpx.request(method, gov.url + route, json=body, headers=headers, timeout=120)
            want = expected(name, route, scope)
            if response.status_code != want or (want >= 400 and not error_shape(dialect, response.json())):
                failures.append(f"{method} {route} with {name}: {response.status_code} {response.text[:120]}")
    assert not failures, "\n".join(failures)


def test_model_scoped_token_sees_only_its_models(gov: Controller) -> None:
    token = gov.token("other-only", "admin", "--model", "other")
    with gov.client(token) as client:
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["other"]
        assert [m["name"] for m in client.get("/api/tags").json()["models"]] == ["other:latest"]


def test_revoked_token_is_refused_on_its_very_next_request(gov: Controller) -> None:
    with gov.client() as admin:
        created = admin.post("/api/v1/tokens", json={"name": "short-lived", "scopes": ["inference"]})
        assert created.status_code == 201
        token = created.json()["token"]
        assert token.startswith("lc_")
        with gov.client(token) as client:
            assert client.get("/v1/models").status_code == 200
            assert admin.delete(f"/api/v1/tokens/{created.json()['id']}").status_code == 200
            assert client.get("/v1/models").status_code == 401


def test_users_api_and_audit(gov: Controller) -> None:
    with gov.client() as admin:
        created = admin.post("/api/v1/users", json={"username": "victor", "password": "victor-pass", "role": "user"})
        assert created.status_code == 201
        assert admin.post("/api/v1/users", json={"username": "victor", "password": "victor-pass"}).status_code == 409
        assert admin.post("/api/v1/users", json={"username": "v", "password": "short"}).status_code == 400
        user_id = created.json()["id"]
        assert admin.patch(f"/api/v1/users/{user_id}", json={"role": "operator"}).json()["role"] == "operator"
        entries = admin.get("/api/v1/audit", params={"action": "user.update"}).json()["entries"]
        assert entries[0]["before"] == {"role": "user", "disabled": False}
        assert entries[0]["after"]["role"] == "operator" and entries[0]["actor"] == "admin"
        assert admin.delete(f"/api/v1/users/{user_id}").status_code == 200
        me = next(u for u in admin.get("/api/v1/users").json()["users"] if u["username"] == "admin")
        assert admin.patch(f"/api/v1/users/{me['id']}", json={"disabled": True}).status_code == 400


@contextlib.contextmanager
def browser(ctl: Controller) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ctl.url) as client:
        yield client


def login(client: httpx.Client, username: str, password: str) -> httpx.Response:
    page = client.get("/ui/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    return client.post("/ui/login", data={"username": username, "password": password, "csrf_token": csrf})


def test_session_cookie_needs_csrf_for_changes(gov: Controller) -> None:
    with browser(gov) as client:
        assert login(client, "admin", gov.admin_password).status_code == 303
        session = next(c for c in client.cookies.jar if c.name == "lc_session")
        assert session.has_nonstandard_attr("HttpOnly") and session.get_nonstandard_attr("SameSite") == "lax"
        assert client.get("/api/v1/models/status").status_code == 200  # reads need no CSRF
        refused = client.post("/api/v1/models/unload", json={"model_id": "other"})
        assert refused.status_code == 403 and "CSRF" in refused.json()["error"]["message"]


def test_login_form_needs_its_csrf_token(gov: Controller) -> None:
    with browser(gov) as client:
        forged = client.post("/ui/login", data={"username": "admin", "password": gov.admin_password})
        assert forged.status_code == 403 and "lc_session" not in client.cookies


def test_lockout_after_repeated_failures(gov: Controller) -> None:
    with browser(gov) as client:
        for _ in range(5):
            assert login(client, "olive", "wrong-password").status_code == 401
        locked = login(client, "olive", "olive-password")
        assert locked.status_code == 429
        assert "too many failed logins" in locked.text
    with gov.client() as admin:
        failures = admin.get("/api/v1/audit", params={"action": "login.failure"}).json()["entries"]
        assert len(failures) >= 6 and failures[0]["client_ip"] == "127.0.0.1"


def test_rate_limits_per_token(gov: Controller) -> None:
    with gov.client() as admin:
        token = admin.post("/api/v1/tokens", json={"name": "limited", "rpm_limit": 3}).json()["token"]
    with gov.client(token) as client:
        body = {"model": "smollm2-135m", "content": "hi"}
        codes = [client.post("/tokenize", json=body).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        refused = client.post("/tokenize", json=body)
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.headers["x-ratelimit-limit-requests"] == "3"
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"


def test_no_secret_in_logs_or_audit(gov: Controller) -> None:
    secrets_used = [gov.admin_password, "olive-password", "ursula-password", *gov.tokens.values()]
    with gov.client() as admin:
        audit = admin.get("/api/v1/audit", params={"limit": 1000}).text
    files = [p for p in gov.root.rglob("*") if p.is_file() and p.name != "secret_key"]
    text = audit + "".join(p.read_bytes().decode("latin-1") for p in files)
    leaked = [s for s in secrets_used if s and s in text]
    assert not leaked


@pytest.mark.slow
def test_usage_rows_survive_sigterm(tmp_path: Path) -> None:
    """10,000 inference requests with mixed tokens, SIGTERM right after: every one has a row."""
    with running_controller(tmp_path, models=[model_entry("smollm2-135m", SMOLLM2, max_concurrency=32)]) as ctl:
        keys = [ctl.token(f"t{i}") for i in range(4)]
        body = {"model": "smollm2-135m", "content": "count me"}

        def burst(i: int) -> int:
            ok = 0
            with httpx.Client(base_url=ctl.url, headers={"Authorization": f"Bearer {keys[i % 4]}"}) as c:
                for _ in range(625):
                    ok += c.post("/tokenize", json=body).status_code == 200
            return ok

        with ThreadPoolExecutor(16) as pool:
            answered = sum(pool.map(burst, range(16)))
        assert answered == 10_000
        # uvicorn shuts down gracefully, then re-raises SIGTERM: exit status -15 is the clean case.
        assert ctl.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
        assert "Finished server process" in ctl.log()
        import sqlite3

        with sqlite3.connect(ctl.root / "data" / "llamacontroller.db") as db:
            rows = db.execute("SELECT count(*), count(DISTINCT token_id) FROM usage_log WHERE endpoint='/tokenize'")
            assert rows.fetchone() == (10_000, 4)
