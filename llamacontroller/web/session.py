"""What every dashboard request works with: the app's services, the signed-in session (or a
redirect to the login page), the CSRF-checked form, the page rendered for that session, and the
actor the audit log names."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, PackageLoader
from starlette.datastructures import FormData
from starlette.responses import RedirectResponse, Response

from llamacontroller.auth.principal import Principal
from llamacontroller.auth.sessions import COOKIE, CSRF_FIELD, CSRF_HEADER, SessionInfo, check_csrf
from llamacontroller.services.audit import Actor
from llamacontroller.services.core import Services

templates = Jinja2Templates(env=Environment(loader=PackageLoader("llamacontroller"), autoescape=True))


async def get_services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


ServicesDep = Annotated[Services, Depends(get_services)]


class LoginRequired(Exception):
    """No valid session: browsers go to the login page, htmx gets an HX-Redirect."""


async def current(request: Request, services: ServicesDep) -> SessionInfo:
    cookie = request.cookies.get(COOKIE)
    session = await services.sessions_store.lookup(cookie) if cookie else None
    if session is None:
        raise LoginRequired
    return session


SessionDep = Annotated[SessionInfo, Depends(current)]


def actor_of(request: Request, principal: Principal | None) -> Actor:
    return Actor(principal, request.client.host if request.client else None, request.headers.get("user-agent"))


def root(request: Request) -> str:
    return str(request.scope.get("root_path", ""))


def login_redirect(request: Request) -> Response:
    target = f"{root(request)}/ui/login"
    if request.headers.get("hx-request"):
        return Response(status_code=401, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


def render(request: Request, session: SessionInfo, name: str, **context: Any) -> Response:
    base = {"root": root(request), "me": session.principal, "csrf": session.csrf_token, "path": request.url.path}
    return templates.TemplateResponse(request, name, {**base, **context})


async def checked_form(request: Request, session: SessionInfo) -> FormData:
    """The posted form, after checking its CSRF token (form field, or header for htmx)."""
    form = await request.form()
    check_csrf(request.method, session.csrf_token, str(form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""))
    return form


def back(request: Request, path: str) -> Response:
    return RedirectResponse(f"{root(request)}/ui{path}", status_code=303)


def install(app: FastAPI) -> None:
    async def to_login(request: Request, exc: Exception) -> Response:
        return login_redirect(request)

    app.add_exception_handler(LoginRequired, to_login)
