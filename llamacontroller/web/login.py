"""Dashboard login and logout. Login has its own CSRF check (a double-submit cookie), since there
is no session yet to hold a token."""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Form, Request
from starlette.responses import RedirectResponse, Response

from llamacontroller.auth.sessions import COOKIE, CSRF_FIELD, check_csrf
from llamacontroller.errors import Forbidden, LlamaControllerError
from llamacontroller.services.audit import record
from llamacontroller.web.session import ServicesDep, actor_of, templates

router = APIRouter(prefix="/ui", include_in_schema=False)
LOGIN_CSRF_COOKIE = "lc_login_csrf"


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", ""))


def _cookie_args(request: Request) -> dict[str, Any]:
    # Secure when the client reached us over HTTPS (directly, or per a trusted proxy's headers).
    return {"httponly": True, "samesite": "lax", "secure": request.url.scheme == "https", "path": _root(request) or "/"}


def _login_page(request: Request, error: str | None = None, status: int = 200) -> Response:
    token = secrets.token_urlsafe(24)
    response = templates.TemplateResponse(
        request, "login.html", {"csrf_token": token, "error": error, "root": _root(request)}, status_code=status
    )
    response.set_cookie(LOGIN_CSRF_COOKIE, token, max_age=3600, **_cookie_args(request))
    return response


@router.get("/login")
async def login_form(request: Request) -> Response:
    return _login_page(request)


@router.post("/login")
async def login(
    request: Request,
    services: ServicesDep,
    username: str = Form(""),
    password: str = Form(""),
    csrf_token: str = Form("", alias=CSRF_FIELD),
) -> Response:
    try:
        check_csrf(request.method, request.cookies.get(LOGIN_CSRF_COOKIE, ""), csrf_token)
    except Forbidden:
        return _login_page(request, "Your login form expired; please try again.", 403)
    actor = actor_of(request, None)
    ip = actor.client_ip
    guard = services.login_guard
    try:
        await guard.begin(username, ip)
    except LlamaControllerError as exc:
        await record(services, actor, "login.failure", f"user:{username[:64]}", result="error: locked out")
        return _login_page(request, exc.message, 429)
    user = await services.auth.authenticate_password(username, password)
    if user is None:
        await record(
            services,
            actor,
            "login.failure",
            f"user:{username[:64]}",
            result="error: wrong username or password",
        )
        return _login_page(request, "Wrong username or password.", 401)
    await guard.succeeded(username, ip)
    cookie, _csrf = await services.sessions_store.create(user, ip, request.headers.get("user-agent"))
    await record(services, actor, "login.success", f"user:{user.username}")
    response = RedirectResponse(f"{_root(request)}/ui/", status_code=303)
    response.set_cookie(COOKIE, cookie, **_cookie_args(request))
    response.delete_cookie(LOGIN_CSRF_COOKIE, path=_root(request) or "/")
    return response


@router.post("/logout")
async def logout(request: Request, services: ServicesDep, csrf_token: str = Form("", alias=CSRF_FIELD)) -> Response:
    cookie = request.cookies.get(COOKIE)
    session = await services.sessions_store.lookup(cookie) if cookie else None
    if session is not None:
        check_csrf(request.method, session.csrf_token, csrf_token)
        await services.sessions_store.revoke(session.id_hash)
        actor = actor_of(request, session.principal)
        await record(services, actor, "logout", f"user:{session.principal.username}")
    response = RedirectResponse(f"{_root(request)}/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path=_root(request) or "/")
    return response
