"""Dashboard pages under /ui. Server-rendered; every form works without JavaScript (POST, then a
303 back), and htmx requests get the changed fragment instead. Jinja2 escapes everything."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from starlette.datastructures import FormData
from starlette.responses import RedirectResponse, Response

from llamacontroller.api import management
from llamacontroller.api.deps import ServicesDep
from llamacontroller.auth.principal import SCOPES
from llamacontroller.auth.sessions import COOKIE, CSRF_FIELD, CSRF_HEADER, SessionInfo, check_csrf
from llamacontroller.errors import BadRequest, Forbidden, LlamaControllerError
from llamacontroller.supervisor.memory import read_gguf
from llamacontroller.web.charts import bar_chart
from llamacontroller.web.login import templates

router = APIRouter(prefix="/ui", include_in_schema=False)


class LoginRequired(Exception):
    """No valid session: browsers go to the login page, htmx gets an HX-Redirect."""


async def current(request: Request, services: Any) -> SessionInfo:
    cookie = request.cookies.get(COOKIE)
    session = await services.sessions_store.lookup(cookie) if cookie else None
    if session is None:
        raise LoginRequired
    return session  # type: ignore[no-any-return]


def login_redirect(request: Request) -> Response:
    target = f"{request.scope.get('root_path', '')}/ui/login"
    if request.headers.get("hx-request"):
        return Response(status_code=401, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


def render(request: Request, session: SessionInfo, name: str, **context: Any) -> Response:
    root = request.scope.get("root_path", "")
    base = {"root": root, "me": session.principal, "csrf": session.csrf_token, "path": request.url.path}
    return templates.TemplateResponse(request, name, {**base, **context})


async def checked_form(request: Request, session: SessionInfo) -> FormData:
    """The posted form, after checking its CSRF token (form field, or header for htmx)."""
    form = await request.form()
    check_csrf(request.method, session.csrf_token, str(form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""))
    return form


def back(request: Request, path: str) -> Response:
    return RedirectResponse(f"{request.scope.get('root_path', '')}/ui{path}", status_code=303)


def require(session: SessionInfo, scope: str) -> None:
    session.principal.require(scope)


# --------------------------------------------------------------------------------- models


def _model_rows(services: Any, session: SessionInfo) -> list[dict[str, Any]]:
    return [m for m in services.supervisor.status() if session.principal.may_use(m["id"])]


@router.get("/")
async def models_page(request: Request, services: ServicesDep) -> Response:
    session = await current(request, services)
    return render(
        request,
        session,
        "models.html",
        models=_model_rows(services, session),
        can_manage="models:manage" in session.principal.scopes,
    )


@router.get("/models/{model_id:path}/row")
async def model_row(model_id: str, request: Request, services: ServicesDep) -> Response:
    session = await current(request, services)
    engine = services.supervisor.resolve(model_id)
    return render(
        request,
        session,
        "_model_row.html",
        m=engine.status(),
        can_manage="models:manage" in session.principal.scopes,
        models=_model_rows(services, session),
    )


@router.post("/models/{model_id:path}/{action}")
async def model_action(model_id: str, action: str, request: Request, services: ServicesDep) -> Response:
    session = await current(request, services)
    form = await checked_form(request, session)
    require(session, "models:manage")
    supervisor = services.supervisor
    engine = supervisor.resolve(model_id)
    principal = session.principal
    if action == "load":
        work: Callable[[], Awaitable[Any]] = lambda: supervisor.load(engine.id)  # noqa: E731
    elif action == "unload":
        work = lambda: supervisor.unload(engine.id)  # noqa: E731
    elif action == "switch":
        target = supervisor.resolve(str(form.get("to_id") or ""))
        work = lambda: supervisor.switch(engine.id, target.id)  # noqa: E731
    else:
        raise BadRequest(f"unknown action {action!r}")

    async def run() -> None:
        await management.audited(services, request, principal, f"model.{action}", engine.id, work())

    # Loading can take a while: answer at once; the page follows the state over SSE.
    supervisor.in_background(run())
    if request.headers.get("hx-request"):
        return render(
            request,
            session,
            "_model_row.html",
            m=engine.status(),
            can_manage=True,
            models=_model_rows(services, session),
        )
    return back(request, "/")


@router.get("/models/{model_id:path}")
async def model_detail(model_id: str, request: Request, services: ServicesDep) -> Response:
    session = await current(request, services)
    engine = services.supervisor.resolve(model_id)
    if not session.principal.may_use(engine.id):
        raise Forbidden(f"you may not use model {engine.id!r}")
    metadata: dict[str, Any] = {}
    if engine.entry.backend == "llamacpp" and engine.entry.path:
        try:
            metadata = {
                k: v for k, v in read_gguf(Path(engine.entry.path)).metadata.items() if k != "tokenizer.chat_template"
            }
        except (OSError, ValueError):
            metadata = {}
    usage: list[dict[str, Any]] = []
    if session.principal.is_admin:
        usage = (await management.list_usage(services, session.principal, model=engine.id, limit=20))["entries"]
    return render(
        request,
        session,
        "model_detail.html",
        m=engine.status(),
        entry=engine.entry.model_dump(),
        metadata=metadata,
        usage=usage,
        can_manage="models:manage" in session.principal.scopes,
    )


# --------------------------------------------------------------------------------- tokens


async def _tokens_page(request: Request, services: Any, session: SessionInfo, created: str | None) -> Response:
    owner = None if session.principal.is_admin else session.principal.user_id
    rows = [management.token_public(t, u) for t, u in await services.auth.list_tokens(owner)]
    models = [e.id for e in services.supervisor.engines.values()]
    return render(request, session, "tokens.html", tokens=rows, scopes=SCOPES, models=models, created=created)


@router.get("/tokens")
async def tokens_page(request: Request, services: ServicesDep) -> Response:
    session = await current(request, services)
    return await _tokens_page(request, services, session, created=None)


@router.post("/tokens")
async def create_token(request: Request, services: ServicesDep) -> Response:
    session = await current(request, services)
    form = await checked_form(request, session)
    principal = session.principal
    user = await services.auth.get_user(str(principal.username))
    scopes = [str(s) for s in form.getlist("scope")] or None
    models = [services.supervisor.resolve(str(m)).id for m in form.getlist("model")]
    created = await services.auth.create_token(
        user,
        str(form.get("name") or "").strip(),
        scopes,
        models,
        str(form.get("expires_in") or "").strip() or None,
        issuer=principal,
    )
    public = management.token_public(created.row, user.username)
    await management.audit(
        services, request, principal, "token.create", f"token:{created.row.id}", after=management.jsonable(public)
    )
    return await _tokens_page(request, services, session, created=created.token)


@router.post("/tokens/{token_id}/revoke")
async def revoke_token(token_id: management.RowId, request: Request, services: ServicesDep) -> Response:
    session = await current(request, services)
    await checked_form(request, session)
    owner = None if session.principal.is_admin else session.principal.user_id
    await services.auth.revoke_token(token_id, owner_id=owner)
    await management.audit(services, request, session.principal, "token.revoke", f"token:{token_id}")
    return back(request, "/tokens")


# ---------------------------------------------------------------------------------- users


@router.get("/users")
async def users_page(request: Request, services: ServicesDep) -> Response:
    session = await current(request, services)
    require(session, "admin")
    users = [management.user_public(u) for u in await services.auth.list_users()]
    return render(request, session, "users.html", users=users)


@router.post("/users")
async def create_user(request: Request, services: ServicesDep) -> Response:
    session = await current(request, services)
    form = await checked_form(request, session)
    require(session, "admin")
    body = management.UserCreate(
        username=str(form.get("username") or ""),
        password=str(form.get("password") or ""),
        role=str(form.get("role") or "user"),
    )
    await management.create_user(body, request, services, session.principal)
    return back(request, "/users")


@router.post("/users/{user_id}")
async def update_user(user_id: management.RowId, request: Request, services: ServicesDep) -> Response:
    session = await current(request, services)
    form = await checked_form(request, session)
    require(session, "admin")
    changes: dict[str, Any] = {}
    if form.get("role"):
        changes["role"] = str(form["role"])
    if form.get("disabled") is not None:
        changes["disabled"] = form.get("disabled") == "true"
    if form.get("password"):
        changes["password"] = str(form["password"])
    # Ends the user's dashboard sessions too (AuthStore.update_user).
    await management.update_user(user_id, management.UserUpdate(**changes), request, services, session.principal)
    return back(request, "/users")


# ------------------------------------------------------------------------------ audit, usage


@router.get("/audit")
async def audit_page(
    request: Request,
    services: ServicesDep,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
    since: str | None = None,
    until: str | None = None,
    page: int = 1,
) -> Response:
    session = await current(request, services)
    require(session, "admin")
    size = 50
    page = max(1, page)
    result = await management.list_audit(
        services,
        session.principal,
        actor=actor or None,
        action=action or None,
        target=target or None,
        since=_date(since, "since"),
        until=_date(until, "until"),
        limit=size + 1,
        offset=(page - 1) * size,
    )
    entries = result["entries"]
    filters = {
        "actor": actor or "",
        "action": action or "",
        "target": target or "",
        "since": since or "",
        "until": until or "",
    }
    return render(
        request, session, "audit.html", entries=entries[:size], page=page, more=len(entries) > size, filters=filters
    )


def _date(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{name}: not a date (use YYYY-MM-DD)", param=name) from None


@router.get("/usage")
async def usage_page(request: Request, services: ServicesDep) -> Response:
    session = await current(request, services)
    require(session, "admin")
    principal = session.principal
    by_day = (await management.list_usage(services, principal, group_by="day"))["groups"]
    by_model = (await management.list_usage(services, principal, group_by="model"))["groups"]
    by_token = (await management.list_usage(services, principal, group_by="token"))["groups"]
    charts = {
        "requests per day": bar_chart([(g["key"], g["requests"]) for g in by_day], "requests"),
        "tokens per day": bar_chart(
            [(g["key"], g["prompt_tokens"] + g["completion_tokens"]) for g in by_day], "tokens"
        ),
        "requests per model": bar_chart([(g["key"], g["requests"]) for g in by_model], "requests"),
        "tokens per token": bar_chart(
            [(f"token {g['key']}", g["prompt_tokens"] + g["completion_tokens"]) for g in by_token], "tokens"
        ),
    }
    return render(request, session, "usage.html", charts=charts, by_model=by_model, by_token=by_token)


# -------------------------------------------------------------------------------- password


@router.get("/password")
async def password_page(request: Request, services: ServicesDep) -> Response:
    session = await current(request, services)
    return render(request, session, "password.html", done=False, error=None)


@router.post("/password")
async def change_password(request: Request, services: ServicesDep) -> Response:
    session = await current(request, services)
    form = await checked_form(request, session)
    principal = session.principal
    user = await services.auth.authenticate_password(str(principal.username), str(form.get("current") or ""))
    if user is None:
        return render(request, session, "password.html", done=False, error="The current password is wrong.")
    try:
        # Every other session of this user ends; this one stays.
        await services.auth.update_user(user.id, password=str(form.get("new") or ""), keep_session=session.id_hash)
    except LlamaControllerError as exc:
        return render(request, session, "password.html", done=False, error=exc.message)
    await management.audit(services, request, principal, "user.password", f"user:{user.username}")
    return render(request, session, "password.html", done=True, error=None)


def install(app: FastAPI) -> None:
    async def to_login(request: Request, exc: Exception) -> Response:
        return login_redirect(request)

    app.add_exception_handler(LoginRequired, to_login)
