"""Dependencies that make route signatures read like declarations."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.requests import ClientDisconnect
from starlette.types import Receive

from llamacontroller.auth.principal import Principal
from llamacontroller.errors import BadRequest, PayloadTooLarge, Unauthenticated
from llamacontroller.services.audit import Actor
from llamacontroller.services.core import Services

MAX_BODY = 32 * 1024 * 1024
# Fits the usage log's request_id column (VARCHAR(64)); anything else gets an id of our own.
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


async def get_services(request: Request) -> Services:
    # async on purpose: FastAPI runs plain `def` dependencies in a thread pool, a thread hop per
    # request that showed up at 3% of the proxy's CPU in py-spy.
    return request.app.state.services  # type: ignore[no-any-return]


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_principal(request: Request) -> Principal:
    """The caller, as the front door (api/frontdoor.py) resolved it before the body was read."""
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        raise Unauthenticated("missing API token: send 'Authorization: Bearer <token>'")
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


def acting(scope: str | None = None) -> Any:
    """The caller as the service layer's audit records name it (principal, address, agent)."""

    async def build(request: Request, principal: PrincipalDep) -> Actor:
        if scope is not None:
            principal.require(scope)
        return actor_of(request, principal)

    return Depends(build)


ActorDep = Annotated[Actor, acting()]
ManagerActor = Annotated[Actor, acting("models:manage")]
AdminActor = Annotated[Actor, acting("admin")]


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


def actor_of(request: Request, principal: Principal | None) -> Actor:
    return Actor(principal, client_ip(request), request.headers.get("user-agent"))


def client_ip(request: Request) -> str | None:
    # uvicorn rewrites request.client from X-Forwarded-For, but only for trusted proxies.
    return request.client.host if request.client else None
