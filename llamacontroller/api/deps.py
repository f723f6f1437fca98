"""Dependencies that make route signatures read like declarations."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request
from starlette.requests import ClientDisconnect
from starlette.types import Receive

from llamacontroller.auth.principal import Principal
from llamacontroller.auth.sessions import COOKIE, CSRF_HEADER, check_csrf
from llamacontroller.errors import BadRequest, PayloadTooLarge, Unauthenticated

if TYPE_CHECKING:
    from llamacontroller.app import Services

MAX_BODY = 32 * 1024 * 1024
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


async def get_services(request: Request) -> Services:
    # async on purpose: FastAPI runs plain `def` dependencies in a thread pool, a thread hop per
    # request that showed up at 3% of the proxy's CPU in py-spy.
    return request.app.state.services  # type: ignore[no-any-return]


ServicesDep = Annotated["Services", Depends(get_services)]


def credential(authorization: str | None, api_key: str | None) -> str | None:
    """The API token a request carries: `Authorization: Bearer` or (Anthropic/Ollama style) `X-API-Key`."""
    if authorization is not None:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthenticated("malformed Authorization header; use 'Bearer <token>'")
        return value.strip()
    return api_key.strip() if api_key else None


async def get_principal(request: Request) -> Principal:
    services: Services = request.app.state.services
    token = credential(request.headers.get("authorization"), request.headers.get("x-api-key"))
    if token is None:
        cookie = request.cookies.get(COOKIE)
        if cookie:
            session = await services.sessions_store.lookup(cookie)
            if session is None:
                raise Unauthenticated("session expired; log in again")
            check_csrf(request.method, session.csrf_token, request.headers.get(CSRF_HEADER))
            request.state.principal = session.principal
            return session.principal
        if not services.settings.auth.require_api_token and not request.url.path.startswith(
            f"{request.scope.get('root_path', '')}/api/v1/"
        ):
            return Principal.anonymous()
        raise Unauthenticated("missing API token: send 'Authorization: Bearer <token>'")
    principal = await services.auth.verify(token)
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def requires(scope: str) -> Any:
    async def check(principal: PrincipalDep) -> Principal:
        principal.require(scope)
        return principal

    return Depends(check)


ManagerDep = Annotated[Principal, requires("models:manage")]
AdminDep = Annotated[Principal, requires("admin")]
InferenceDep = Annotated[Principal, requires("inference")]


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    return await receive_body(request.receive, request.headers.get("content-length"), limit)


async def receive_body(receive: Receive, declared: str | None, limit: int = MAX_BODY) -> bytes:
    """The whole request body, refused (413) as soon as it is known to be over `limit`."""
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body over {limit // 2**20} MiB")
    body = bytearray()  # bytes += would copy the whole body for every chunk
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect("the client closed the connection while sending the request")
        chunk: bytes = message.get("body", b"")
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"request body over {limit // 2**20} MiB")
        if not message.get("more_body", False):
            return bytes(body)


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def client_ip(request: Request) -> str | None:
    # uvicorn rewrites request.client from X-Forwarded-For, but only for trusted proxies.
    return request.client.host if request.client else None
