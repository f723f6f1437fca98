"""Users, tokens, scopes, sessions, lockout, audit and usage — on SQLite and on PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.harness import SMOLLM2, Controller, model_entry, running_controller
from tests.servers import create_database


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def gov(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    """A controller with one model, on a fresh database of each kind."""
    env: dict[str, str] = {}
    database = None
    if request.param == "postgresql":
        # The test run's own throwaway server (tests/servers.py): needs no server already running.
        pg_admin = request.getfixturevalue("postgres")
        database = f"lc_test_{secrets.token_hex(4)}"
        env["LLAMACONTROLLER_DATABASE_URL"] = create_database(pg_admin, database)
    root = tmp_path_factory.mktemp(f"gov-{request.param}")
    try:
        with running_controller(
            root,
            models=[model_entry("smollm2-135m", SMOLLM2, max_concurrency=16), model_entry("other", SMOLLM2)],
            extra_env={**env, "HF_ENDPOINT": "http://127.0.0.1:9"},
        ) as ctl:
            ctl.cli("users", "create", "olive", "--role", "operator", "--password-stdin", stdin="olive-password\n")
            ctl.cli("users", "create", "ursula", "--role", "user", "--password-stdin", stdin="ursula-password\n")
            yield ctl
            # Shutdown completes (usage flushed) whatever the tests sent: never a hang.
            began = time.monotonic()
            assert ctl.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
            assert time.monotonic() - began < 20
    finally:
        if database:
            with psycopg.connect(pg_admin, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def credentials(ctl: Controller) -> dict[str, dict[str, str]]:
    """One set of request headers per credential of the matrix."""
    expired = ctl.token("expired", "admin", "--expires-in", "1s")
    revoked = ctl.token("revoked", "admin")
    with ctl.client() as admin:
        listed = admin.get("/api/v1/tokens").json()["tokens"]
    ctl.cli("tokens", "revoke", str(next(t["id"] for t in listed if t["name"] == "revoked")))
    time.sleep(1.1)
    bearer = {
        "garbage": "lc_" + "x" * 43,
        "expired": expired,
        "revoked": revoked,
        "restricted": ctl.token("restricted", "admin", "--scope", "inference", "--model", "other"),
        "inference": ctl.token("ursula", "ursula"),
        "operator": ctl.token("olive", "olive"),
        "admin": ctl.token(),
    }
    creds = {"none": {}, "malformed": {"Authorization": "Basic abc"}}
    creds.update({name: {"Authorization": f"Bearer {token}"} for name, token in bearer.items()})
    with browser(ctl) as client:
        assert login(client, "admin", ctl.admin_password).status_code == 303
        csrf = re.search(r'"X-CSRF-Token": "([^"]+)"', client.get("/ui/").text).group(1)  # type: ignore[union-attr]
        cookie = f"lc_session={client.cookies['lc_session']}"
    creds["session-no-csrf"] = {"Cookie": cookie}
    creds["session"] = {"Cookie": cookie, "X-CSRF-Token": csrf}
    return creds


UNAUTHENTICATED = ("none", "malformed", "garbage", "expired", "revoked")
SCOPES = {  # what each authenticated credential may do
    "restricted": {"self", "inference"},
    "inference": {"self", "inference"},
    "operator": {"self", "inference", "manage"},
    "admin": {"self", "inference", "manage", "admin"},
    "session": {"self", "inference", "manage", "admin", "ui"},
    "session-no-csrf": {"self", "inference", "manage", "admin", "ui"},
}
SM, OTHER = "smollm2-135m", "other"
CHAT = {"model": SM, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
OLLAMA = {"model": SM, "stream": False, "options": {"num_predict": 1}}


@dataclass
class Row:
    path: str
    access: str  # public | self | inference | manage | admin | ui
    body: dict[str, object] | None = None
    model: bool = False  # names SM: a token restricted to OTHER is refused
    restricted_status: int = 403
    ok_5xx: tuple[int, ...] = ()  # what the engine itself answers (no embeddings in this model)
    stream: bool = False  # SSE: only the status is read


# Every (method, route) of the app. A route added without a row here fails the test.
MATRIX: dict[tuple[str, str], Row] = {
    ("GET", "/health"): Row("/health", "public"),
    ("GET", "/ready"): Row("/ready", "public"),
    ("GET", "/metrics"): Row("/metrics", "public"),
    ("GET", "/"): Row("/", "public"),
    ("GET", "/api/version"): Row("/api/version", "public"),
    ("GET", "/api/v1/docs"): Row("/api/v1/docs", "public"),
    ("GET", "/api/v1/docs/oauth2-redirect"): Row("/api/v1/docs/oauth2-redirect", "public"),
    ("GET", "/api/v1/openapi.json"): Row("/api/v1/openapi.json", "public"),
    ("GET", "/static/{path}"): Row("/static/htmx.min.js", "public"),
    ("GET", "/ui/login"): Row("/ui/login", "public"),
    ("POST", "/ui/login"): Row("/ui/login", "public", {"username": "x", "password": "y"}),
    ("POST", "/v1/chat/completions"): Row("/v1/chat/completions", "inference", CHAT, model=True),
    ("POST", "/v1/completions"): Row(
        "/v1/completions", "inference", {"model": SM, "prompt": "a", "max_tokens": 1}, True
    ),
    ("POST", "/v1/embeddings"): Row("/v1/embeddings", "inference", {"model": SM, "input": "a"}, True, ok_5xx=(501,)),
    ("POST", "/v1/rerank"): Row(
        "/v1/rerank", "inference", {"model": SM, "query": "a", "documents": ["b"]}, True, ok_5xx=(501,)
    ),
    ("POST", "/tokenize"): Row("/tokenize", "inference", {"model": SM, "content": "hi"}, model=True),
    ("POST", "/detokenize"): Row("/detokenize", "inference", {"model": SM, "tokens": [1]}, model=True),
    ("POST", "/apply-template"): Row("/apply-template", "inference", CHAT, model=True),
    ("GET", "/v1/models"): Row("/v1/models", "inference"),
    ("GET", "/v1/models/{model_id:path}"): Row(f"/v1/models/{SM}", "inference", model=True, restricted_status=404),
    ("GET", "/api/tags"): Row("/api/tags", "inference"),
    ("GET", "/api/ps"): Row("/api/ps", "inference"),
    ("POST", "/api/show"): Row("/api/show", "inference", {"model": SM}, model=True),
    ("POST", "/api/generate"): Row("/api/generate", "inference", {**OLLAMA, "prompt": "hi"}, model=True),
    ("POST", "/api/chat"): Row("/api/chat", "inference", {**OLLAMA, "messages": CHAT["messages"]}, model=True),
    ("POST", "/api/embed"): Row("/api/embed", "inference", {"model": SM, "input": "a"}, True, ok_5xx=(501,)),
    ("POST", "/api/embeddings"): Row("/api/embeddings", "inference", {"model": SM, "prompt": "a"}, True, ok_5xx=(501,)),
    # The Hub is a closed port here: an allowed pull gets as far as a 502.
    ("POST", "/api/pull"): Row("/api/pull", "manage", {"model": "hf.co/a/b", "stream": False}, ok_5xx=(502,)),
    ("DELETE", "/api/delete"): Row("/api/delete", "manage", {"model": OTHER}, model=True),
    ("GET", "/api/v1/models"): Row("/api/v1/models", "self"),
    ("GET", "/api/v1/models/status"): Row("/api/v1/models/status", "manage"),
    ("POST", "/api/v1/models/load"): Row("/api/v1/models/load", "manage", {"model_id": SM}, model=True),
    ("POST", "/api/v1/models/unload"): Row("/api/v1/models/unload", "manage", {"model_id": SM}, model=True),
    ("POST", "/api/v1/models/switch"): Row("/api/v1/models/switch", "manage", {"from_id": OTHER, "to_id": SM}, True),
    ("GET", "/api/v1/models/{model_id:path}/logs"): Row(f"/api/v1/models/{SM}/logs", "manage", model=True),
    ("GET", "/api/v1/events"): Row("/api/v1/events", "manage", stream=True),
    ("POST", "/api/v1/models/pull"): Row("/api/v1/models/pull", "manage", {"source": "a/b"}, ok_5xx=(502,)),
    ("POST", "/api/v1/models/convert"): Row("/api/v1/models/convert", "manage", {"model_id": SM}, model=True),
    ("DELETE", "/api/v1/models/{model_id:path}"): Row(f"/api/v1/models/{OTHER}", "manage", model=True),
    ("GET", "/api/v1/jobs"): Row("/api/v1/jobs", "manage"),
    ("GET", "/api/v1/jobs/{job_id}"): Row("/api/v1/jobs/0123456789abcdef", "manage"),
    ("DELETE", "/api/v1/jobs/{job_id}"): Row("/api/v1/jobs/0123456789abcdef", "manage"),
    ("GET", "/api/v1/tokens"): Row("/api/v1/tokens", "self"),
    ("POST", "/api/v1/tokens"): Row("/api/v1/tokens", "self", {"name": "matrix"}),
    ("DELETE", "/api/v1/tokens/{token_id}"): Row("/api/v1/tokens/999999", "self"),
    ("GET", "/api/v1/users"): Row("/api/v1/users", "admin"),
    ("POST", "/api/v1/users"): Row("/api/v1/users", "admin", {"username": "bad name", "password": "p" * 10}),
    ("PATCH", "/api/v1/users/{user_id}"): Row("/api/v1/users/999999", "admin", {"role": "user"}),
    ("DELETE", "/api/v1/users/{user_id}"): Row("/api/v1/users/999999", "admin"),
    ("GET", "/api/v1/audit"): Row("/api/v1/audit", "admin"),
    ("GET", "/api/v1/usage"): Row("/api/v1/usage", "admin"),
    ("POST", "/api/v1/config/reload"): Row("/api/v1/config/reload", "admin", {}),
    ("GET", "/ui/"): Row("/ui/", "ui"),
    ("GET", "/ui/models/{model_id:path}/row"): Row(f"/ui/models/{OTHER}/row", "ui"),
    ("POST", "/ui/models/{model_id:path}/{action}"): Row(f"/ui/models/{OTHER}/unload", "ui", {}),
    ("GET", "/ui/models/{model_id:path}"): Row(f"/ui/models/{OTHER}", "ui"),
    ("GET", "/ui/models-table"): Row("/ui/models-table", "ui"),
    ("GET", "/ui/jobs"): Row("/ui/jobs", "ui"),
    ("POST", "/ui/pull"): Row("/ui/pull", "ui", {"source": "not a repo"}),
    ("POST", "/ui/jobs/{job_id}/cancel"): Row("/ui/jobs/0123456789abcdef/cancel", "ui", {}),
    ("GET", "/ui/tokens"): Row("/ui/tokens", "ui"),
    ("POST", "/ui/tokens"): Row("/ui/tokens", "ui", {"name": "matrix"}),
    ("POST", "/ui/tokens/{token_id}/revoke"): Row("/ui/tokens/999999/revoke", "ui", {}),
    ("GET", "/ui/users"): Row("/ui/users", "ui"),
    ("POST", "/ui/users"): Row("/ui/users", "ui", {"username": "bad name", "password": "p" * 10}),
    ("POST", "/ui/users/{user_id}"): Row("/ui/users/999999", "ui", {"role": "user"}),
    ("GET", "/ui/audit"): Row("/ui/audit", "ui"),
    ("GET", "/ui/usage"): Row("/ui/usage", "ui"),
    ("GET", "/ui/password"): Row("/ui/password", "ui"),
    ("POST", "/ui/password"): Row("/ui/password", "ui", {"current": "wrong", "new": "whatever1"}),
    ("POST", "/ui/logout"): Row("/ui/logout", "ui", {}),  # last: it ends the session
}


def app_routes(ctl: Controller) -> set[tuple[str, str]]:
    """(method, path) of every route the app serves, read from the app itself."""
    from fastapi.routing import APIRoute
    from starlette.routing import Mount, Route

    from llamacontroller.app import create_api
    from llamacontroller.config import load_settings

    app = create_api(load_settings(config_dir=str(ctl.root / "config"), data_dir=str(ctl.data_dir)))
    found = set()
    pending = [(route, "") for route in app.routes]
    while pending:
        route, prefix = pending.pop()
        if isinstance(route, APIRoute | Route):
            found |= {(m, prefix + route.path) for m in route.methods or () if m != "HEAD"}
        elif isinstance(route, Mount):
            found.add(("GET", prefix + route.path + "/{path}"))
        else:
            # FastAPI >= 0.16x keeps each included router whole: walk into it. A router's own
            # routes carry its prefix already; the routers it includes get it from here.
            router = getattr(route, "original_router", None)
            for child in getattr(router, "routes", []):
                nested = not isinstance(child, APIRoute | Route | Mount)
                pending.append((child, prefix + router.prefix if nested else prefix))
    assert len(found) > 20
    return found


def expected(cred: str, row: Row, method: str) -> int | None:
    """The status a credential must get, or None where it must get through (not 401/403)."""
    if row.access == "public":
        return None
    if row.access == "ui":
        if not cred.startswith("session"):
            return 303  # tokens are no dashboard session: to the login page, body unread
        return 403 if cred == "session-no-csrf" and method != "GET" else None
    if cred in UNAUTHENTICATED:
        return 401
    if cred == "session-no-csrf" and method != "GET":
        return 403
    if row.access not in SCOPES[cred]:
        return 403
    if cred == "restricted" and row.model:
        return row.restricted_status
    return None


def test_authorization_matrix_covers_every_route(gov: Controller) -> None:
    routes = app_routes(gov)
    assert routes == set(MATRIX), (
        f"routes without a row: {routes - set(MATRIX)}; rows without a route: {set(MATRIX) - routes}"
    )
    creds = credentials(gov)
    failures = []
    with httpx.Client(base_url=gov.url, timeout=120, follow_redirects=False) as client:
        for (method, _), row in MATRIX.items():
            for name, headers in creds.items():
                if row.access == "ui" and row.path == "/ui/logout" and name == "session":
                    continue  # would end the session the other rows use; tested in test_dashboard
                want = expected(name, row, method)
                ui = row.access in ("ui", "public") and row.path.startswith("/ui")
                kwargs: dict[str, object] = {"data": row.body} if ui else {"json": row.body}
                with client.stream(method, row.path, headers=headers, **kwargs) as response:  # type: ignore[arg-type]
                    status = response.status_code
                    text = "" if row.stream and status == 200 else response.read().decode(errors="replace")
                where = f"{method} {row.path} as {name}: {status} {text[:150]}"
                if want is not None:
                    if status != want:
                        failures.append(f"{where} (want {want})")
                    elif (
                        want in (401, 403, 404) and not ui and not error_shape(dialect_for(row.path), json.loads(text))
                    ):
                        failures.append(f"{where} (not in the route's error dialect)")
                elif row.access == "public":
                    if status == 401 or status >= 500:
                        failures.append(f"{where} (public)")
                elif status in (401, 403) or (status >= 500 and status not in row.ok_5xx):
                    failures.append(f"{where} (want it to get through)")
                elif status in row.ok_5xx:
                    pass  # the engine's own answer, passed through as it wrote it
                elif status >= 400 and not ui and not error_shape(dialect_for(row.path), json.loads(text)):
                    failures.append(f"{where} (not in the route's error dialect)")
    assert not failures, "\n".join(failures)


def dialect_for(path: str) -> str:
    if path.startswith("/api/v1/"):
        return "management"
    return "ollama" if path.startswith("/api/") else "openai"


def error_shape(dialect: str, body: dict[str, object]) -> bool:
    error = body.get("error")
    if dialect == "ollama":
        return isinstance(error, str)
    if dialect == "openai":
        return isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}
    return isinstance(error, dict) and set(error) == {"code", "message"}


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


def test_usage_cannot_be_poisoned_by_a_long_request_id(gov: Controller) -> None:
    """A 100-character X-Request-ID once failed the usage batch on PostgreSQL (VARCHAR(64)), which
    was retried forever: no usage row for anyone after it, and shutdown hung."""
    body = {"model": "smollm2-135m", "content": "count me"}
    with gov.client() as client:
        poisoned = client.post("/tokenize", json=body, headers={"X-Request-ID": "p" * 100})
        assert poisoned.status_code == 200 and poisoned.headers["x-request-id"] != "p" * 100
        for i in range(3):
            assert client.post("/tokenize", json=body, headers={"X-Request-ID": f"after-poison-{i}"}).status_code == 200
    for i in range(3):
        row = gov.usage_row(lambda r, i=i: r["request_id"] == f"after-poison-{i}")  # type: ignore[misc]
        assert row["status"] == 200
    gov.usage_row(lambda r: r["request_id"] == poisoned.headers["x-request-id"])


def test_passwords_over_72_bytes_are_a_clear_error_not_a_500(gov: Controller) -> None:
    with gov.client() as admin:
        refused = admin.post("/api/v1/users", json={"username": "longpw", "password": "p" * 100})
        assert refused.status_code == 400 and "72 bytes" in refused.json()["error"]["message"]
    with browser(gov) as client:
        assert login(client, "ursula", "é" * 60).status_code == 401  # 120 bytes


def test_password_change_and_disable_end_other_sessions(gov: Controller) -> None:
    gov.cli("users", "create", "sam", "--role", "operator", "--password-stdin", stdin="sam-password-1\n")
    with browser(gov) as first, browser(gov) as second:
        assert login(first, "sam", "sam-password-1").status_code == 303
        assert login(second, "sam", "sam-password-1").status_code == 303
        page = second.get("/ui/password")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        changed = second.post(
            "/ui/password", data={"current": "sam-password-1", "new": "sam-password-2", "csrf_token": csrf}
        )
        assert changed.status_code == 200
        assert second.get("/api/v1/models/status").status_code == 200  # the session that changed it stays
        assert first.get("/api/v1/models/status").status_code == 401  # every other one ends
        with gov.client() as admin:
            sam = next(u for u in admin.get("/api/v1/users").json()["users"] if u["username"] == "sam")
            assert admin.patch(f"/api/v1/users/{sam['id']}", json={"disabled": True}).status_code == 200
        assert second.get("/api/v1/models/status").status_code == 401
