"""The front door: what every request passes before routing, and before its body is read.

A pure ASGI middleware, so it runs before FastAPI reads a body (FastAPI parses the body before it
resolves dependencies, so an auth dependency alone came too late: a 10 MB body to a management
route was read, then refused). In order:

1. Anonymous mode only: the Host must be one of `auth.allowed_hosts` (default: the loopback names
   and the bind address), which stops DNS rebinding; a state-changing request from a browser on
   another origin is refused (403), which stops a web page the operator visits from driving the API.
2. A declared body over the route family's cap is refused (413) without reading it; a chunked
   one is cut off (413) as soon as it passes the cap.
3. Routes that need a caller resolve the credential here: `Authorization: Bearer` (the first such
   header, as Starlette reads it) or `X-API-Key`, else a dashboard session cookie (with its CSRF
   token on state-changing requests), else anonymous where allowed. A request without a valid
   credential is answered 401 before a byte of its body is read; uvicorn sends `100 Continue`
   only when the app first reads the body, so that too comes after this check.
4. Dashboard and static responses get the security headers (CSP, nosniff, frame and referrer).

Around all of it: every request gets an id (a well-formed `X-Request-ID` it sent, else one of
ours), echoed in the response's `X-Request-ID`, carried by every log record written for it and
by its usage row; and one access-log line when its response ends (`access_log`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from sqlalchemy.exc import DBAPIError
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llamacontroller.api.deps import MAX_BODY, REQUEST_ID
from llamacontroller.api.errors import database_unavailable, dialect_for, error_response, render
from llamacontroller.auth.principal import Principal
from llamacontroller.auth.sessions import COOKIE, CSRF_HEADER, SAFE_METHODS, check_csrf
from llamacontroller.config import Settings
from llamacontroller.errors import (
    BadRequest,
    Forbidden,
    LengthRequired,
    LlamaControllerError,
    ModelUnavailable,
    PayloadTooLarge,
    Unauthenticated,
)
from llamacontroller.logs import ACCESS, request_id
from llamacontroller.services.core import Services

log = logging.getLogger(__name__)
access = logging.getLogger(ACCESS)

KiB, MiB = 1024, 1024 * 1024
INFERENCE_BODY = MAX_BODY  # what the inference handlers read at most; images travel base64 in the JSON
MANAGEMENT_BODY = 1 * MiB
LOGIN_BODY = 64 * KiB
SMALL_BODY = 64 * KiB  # routes that take no body

CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),  # no inline scripts or styles anywhere in the dashboard
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
REFUSALS = frozenset({401, 403, 413, 429, 503})  # counted in llamacontroller_refused_requests

# (method, path) answered to anyone: liveness, Ollama's "is it running" checks, the login page.
PUBLIC = {
    ("GET", "/health"),
    ("HEAD", "/health"),
    ("GET", "/ready"),
    ("GET", "/"),
    ("HEAD", "/"),
    ("GET", "/api/version"),
    ("HEAD", "/api/version"),
}
DOCS = ("/api/v1/docs", "/api/v1/docs/oauth2-redirect", "/api/v1/openapi.json")


def body_cap(path: str) -> int:
    if path == "/ui/login":
        return LOGIN_BODY
    if path.startswith(("/api/v1/", "/ui")):
        return MANAGEMENT_BODY
    if path.startswith(("/api/", "/v1/")) or path in ("/tokenize", "/detokenize", "/apply-template"):
        return INFERENCE_BODY
    return SMALL_BODY


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a header, as Starlette's Headers.get reads it."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def relative_path(scope: Scope) -> str:
    root: str = scope.get("root_path", "")
    path: str = scope["path"]
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


def credential(authorization: str | None, api_key: str | None) -> str | None:
    """The API token a request carries: `Authorization: Bearer` or (Anthropic/Ollama style) `X-API-Key`."""
    if authorization is not None:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthenticated("malformed Authorization header; use 'Bearer <token>'")
        return value.strip()
    return api_key.strip() if api_key and api_key.strip() else None


def _hostname(host: str) -> str:
    """'example.com:3000' -> 'example.com', '[::1]:3000' -> '::1'."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class FrontDoor:
    def __init__(self, app: ASGIApp, settings: Settings, services: Callable[[], Services | None]) -> None:
        self.app = app
        self.settings = settings
        self.services = services
        auth = settings.auth
        self.allowed_hosts = {h.lower() for h in auth.allowed_hosts or [*LOOPBACK_HOSTS, settings.host]}
        self.allowed_origins = {o.rstrip("/").lower() for o in auth.allowed_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.settings.root_path:
            scope["root_path"] = self.settings.root_path  # for every layer behind this one (and url_for)
        given = header(scope, b"x-request-id")
        rid = given if given and REQUEST_ID.match(given) else os.urandom(16).hex()
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id.set(rid)
        sent = _Sent(rid.encode())
        try:
            await self.admit(scope, receive, sent.wrap(send))
        finally:
            request_id.reset(token)
            if sent.status in REFUSALS and (services := self.services()) is not None:
                services.metrics.refused(sent.status)
            if self.settings.access_log:
                sent.log(scope)

    async def admit(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = relative_path(scope)
        dialect = dialect_for(path)
        cap = body_cap(path)
        try:
            declared = header(scope, b"content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > cap):
                raise PayloadTooLarge(f"request body over {cap // KiB} KiB for this route")
            if declared is None and cap < INFERENCE_BODY and header(scope, b"transfer-encoding") is not None:
                # Forms and management calls always know their length; a chunked one is refused
                # unread rather than trusted to every body parser to stop at the cap.
                raise LengthRequired("send a Content-Length with this request")
            principal = await self.authenticate(scope, path)
        except LlamaControllerError as exc:
            await render(dialect, exc)(scope, receive, send)
            return
        except _ToLogin:
            await _login_redirect(scope)(scope, receive, send)
            return
        except DBAPIError as exc:  # checking the credential needed the database, which is down
            await render(dialect, database_unavailable(exc))(scope, receive, send)
            return
        except Exception:
            # The front door sits outside FastAPI's error handlers: answer a bug here itself.
            log.exception("unhandled error checking %s %s", scope["method"], path[:200])
            await error_response(dialect, 500, "internal error; see the controller log", "internal_error")(
                scope, receive, send
            )
            return
        if principal is not None:
            scope["state"]["principal"] = principal
        if path.startswith(("/ui", "/static")):
            send = _with_security_headers(send)
        await self.app(scope, _capped(receive, cap), send)

    async def authenticate(self, scope: Scope, path: str) -> Principal | None:
        """The caller, for routes that need one; None for public routes and dashboard pages
        (which send browsers to the login page themselves)."""
        method: str = scope["method"]
        auth = self.settings.auth
        if (method, path) in PUBLIC or path.startswith("/static/") or path == "/ui/login":
            return None
        if path == "/metrics" and not auth.metrics_require_token:
            return None
        if path in DOCS and not auth.docs_require_token:
            return None
        services = self.services()
        if services is None:
            raise ModelUnavailable("the controller is starting", retry_after=1)
        cookie = _cookie(scope, COOKIE)
        if path.startswith("/ui"):  # the dashboard knows sessions only, not API tokens
            if method in SAFE_METHODS:
                return None  # the page sends a browser without a session to the login form
            if not cookie or await services.sessions_store.lookup(cookie) is None:
                raise _ToLogin  # a form post without a session: its body is never read
            return None  # pages check their form's CSRF token themselves (field or header)
        token = credential(header(scope, b"authorization"), header(scope, b"x-api-key"))
        if token is not None:
            return await services.auth.verify(token)
        if cookie:
            session = await services.sessions_store.lookup(cookie)
            if session is None:
                raise Unauthenticated("session expired; log in again")
            check_csrf(method, session.csrf_token, header(scope, CSRF_HEADER.encode()))
            return session.principal
        if not auth.require_api_token and not path.startswith("/api/v1/"):
            self.check_anonymous(scope, method)
            return Principal.anonymous()
        raise Unauthenticated("missing API token: send 'Authorization: Bearer <token>'")

    def check_anonymous(self, scope: Scope, method: str) -> None:
        """Without tokens, only the browser's own rules keep other web pages out: check them."""
        host = (header(scope, b"host") or "").lower()
        if _hostname(host) not in self.allowed_hosts:
            raise BadRequest(f"host {host[:100]!r} is not allowed (auth.allowed_hosts)")
        if method in SAFE_METHODS:
            return
        origin = header(scope, b"origin")
        if origin is not None:
            if urlsplit(origin).netloc.lower() != host and origin.rstrip("/").lower() not in self.allowed_origins:
                raise Forbidden(f"cross-origin request from {origin[:100]!r} refused (auth.allowed_origins)")
        elif header(scope, b"sec-fetch-site") == "cross-site":
            raise Forbidden("cross-site request refused")


class _ToLogin(Exception):
    """A dashboard request without a valid session."""


def _login_redirect(scope: Scope) -> Response:
    target = f"{scope.get('root_path', '')}/ui/login"
    if header(scope, b"hx-request"):
        return Response(status_code=401, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


def _cookie(scope: Scope, name: str) -> str | None:
    raw = header(scope, b"cookie")
    if not raw:
        return None
    for part in raw.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def _capped(receive: Receive, cap: int) -> Receive:
    """The body as it comes, cut off (413) as soon as it passes `cap` (a chunked body has no
    Content-Length to check up front)."""
    seen = 0

    async def capped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > cap:
                raise PayloadTooLarge(f"request body over {cap // KiB} KiB for this route")
        return message

    return capped


def _with_security_headers(send: Send) -> Send:
    async def secured(message: Message) -> None:
        if message["type"] == "http.response.start":
            present = {name.lower() for name, _ in message.get("headers", [])}
            extra = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return secured


class _Sent:
    """What went back for one request: adds its X-Request-ID, notes status and size, and writes
    the access-log line."""

    __slots__ = ("began", "bytes", "rid", "status")

    def __init__(self, rid: bytes) -> None:
        self.rid = rid
        self.began = time.perf_counter()
        self.status = 0
        self.bytes = 0

    def wrap(self, send: Send) -> Send:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
                headers = message.get("headers", [])
                if not any(name.lower() == b"x-request-id" for name, _ in headers):  # the proxy sets its own
                    message = {**message, "headers": [*headers, (b"x-request-id", self.rid)]}
            elif message["type"] == "http.response.body":
                self.bytes += len(message.get("body", b""))
            await send(message)

        return sending

    def log(self, scope: Scope) -> None:
        principal = scope.get("state", {}).get("principal")
        client = scope.get("client")
        fields = {
            "method": scope["method"],
            # Escaped: a decoded path may hold a newline, which would forge a log line.
            "path": scope["path"][:200].encode("unicode_escape").decode("ascii"),
            "status": self.status or 499,  # the client left before any answer
            "duration_ms": round((time.perf_counter() - self.began) * 1000, 1),
            "client_ip": client[0] if client else None,
            "principal": (principal.username or "anonymous") if principal is not None else None,
            "bytes_sent": self.bytes,
        }
        access.info(
            "%s %s %s %.1fms %s %s",
            fields["method"],
            fields["path"],
            fields["status"],
            fields["duration_ms"],
            fields["client_ip"] or "-",
            fields["principal"] or "-",
            extra={**fields, "request_id": self.rid.decode()},
        )
