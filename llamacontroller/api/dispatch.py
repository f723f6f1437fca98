"""The one path every inference request takes, whatever dialect it arrived in."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import Request

from llamacontroller.api.deps import client_ip, request_id
from llamacontroller.api.errors import Dialect
from llamacontroller.auth.principal import Principal
from llamacontroller.proxy.call import CallContext, Translator, UpstreamCall

if TYPE_CHECKING:
    from llamacontroller.app import Services


def client_user(request: Request) -> dict[str, str] | None:
    """Open WebUI's X-OpenWebUI-User-* headers: which of its users made the request."""
    found = {
        key.removeprefix("x-openwebui-user-"): value[:256]
        for key, value in request.headers.items()
        if key.startswith("x-openwebui-user-")
    }
    return found or None


def dispatch(
    request: Request,
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
    release = services.limits.admit(principal)
    rid = request_id(request)
    who = {
        "token_id": principal.token_id,
        "username": principal.username,
        "client_ip": client_ip(request),
        "client_user": client_user(request),
    }

    def record(row: dict[str, Any]) -> None:
        release((row.get("prompt_tokens") or 0) + (row.get("completion_tokens") or 0))
        row.update(who)
        services.usage.add(**row)
        services.metrics.observe_request(row)

    return UpstreamCall(
        CallContext(
            engine=engine,
            gate=services.gate(engine.id),
            dialect=dialect,
            endpoint=request.url.path,
            upstream_path=upstream_path,
            body=body,
            request_id=rid,
            stream=stream,
            record=record,
            http=services.supervisor.http(),
            translator=translator,
            on_lease=on_lease,
            timeout=engine.entry.request_timeout,
            upstream_stream=upstream_stream,
        )
    )
