"""The one path every inference request takes, whatever dialect it arrived in."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from fastapi import Request
from starlette.types import Scope

from llamacontroller.api.deps import REQUEST_ID
from llamacontroller.api.errors import Dialect, render
from llamacontroller.auth.principal import Principal
from llamacontroller.errors import NotSupported
from llamacontroller.proxy.call import CallContext, Translator, UpstreamCall
from llamacontroller.services.core import Services


@dataclass(slots=True)
class Origin:
    """Where an inference request came from: what the usage log records and the engine is told."""

    endpoint: str  # the path the client called
    request_id: str
    client_ip: str | None
    client_user: dict[str, str] | None = None  # Open WebUI's X-OpenWebUI-User-* headers

    @classmethod
    def of(cls, request: Request) -> Origin:
        return cls.from_headers(request.scope, request.scope["headers"])

    @classmethod
    def from_headers(cls, scope: Scope, headers: list[tuple[bytes, bytes]]) -> Origin:
        """One pass over the raw ASGI headers (the passthrough dispatcher has no Request object)."""
        given = scope.get("state", {}).get("request_id")  # the front door's
        user: dict[str, str] | None = None
        for name, value in headers:
            if name == b"x-request-id" and given is None:
                given = value.decode("latin-1")
            elif name.startswith(b"x-openwebui-user-"):
                user = user or {}
                user[name[17:].decode("latin-1")] = value.decode("utf-8", "replace")[:256]
        client = scope.get("client")
        # uvicorn rewrites the client from X-Forwarded-For, but only for trusted proxies.
        return cls(
            endpoint=scope["path"],
            request_id=given if given and REQUEST_ID.match(given) else os.urandom(16).hex(),
            client_ip=client[0] if client else None,
            client_user=user,
        )


async def dispatch(
    origin: Origin,
    services: Services,
    principal: Principal,
    *,
    dialect: Dialect,
    model: str | None,
    upstream_path: str,
    body: bytes,
    stream: bool,
    translator: Translator | None = None,
    on_lease: Callable[[], None] | None = None,
    upstream_stream: bool | None = None,
) -> UpstreamCall:
    engine = services.supervisor.resolve(model)
    principal.require_model(engine.id)
    if not engine.serves(upstream_path):
        raise NotSupported(f"model {engine.id!r} ({engine.backend.name}) does not serve {upstream_path}")
    served = engine.served_name
    if served is not None and model != served:
        body = renamed(body, served)
    release = await services.limits.admit(principal)

    def record(row: dict[str, Any]) -> None:
        release((row["prompt_tokens"] or 0) + (row["completion_tokens"] or 0))
        row["token_id"] = principal.token_id
        row["username"] = principal.username
        row["client_ip"] = origin.client_ip
        # Only a front end an admin marked as trusted may say which of its users is asking.
        row["client_user"] = origin.client_user if principal.trusted_frontend else None
        services.usage.add(row)
        services.metrics.observe_request(row)

    return UpstreamCall(
        CallContext(
            engine=engine,
            gate=services.gate(engine.id),
            dialect=dialect.value,
            render=partial(render, dialect),
            endpoint=origin.endpoint,
            upstream_path=upstream_path,
            body=body,
            request_id=origin.request_id,
            stream=stream,
            record=record,
            translator=translator,
            on_lease=on_lease,
            timeout=engine.entry.request_timeout,
            upstream_stream=upstream_stream,
            stream_done=engine.backend.stream_done,
        )
    )


def renamed(body: bytes, model: str) -> bytes:
    """The request with `model` set to the engine's own name for it (vLLM and `transformers
    serve` refuse any other). Only when the client used another name: an alias, another case."""
    payload = json.loads(body)
    payload["model"] = model
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
