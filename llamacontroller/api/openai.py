"""OpenAI-compatible routes: the body goes to the engine as it came, the answer comes back as the
engine sent it. Only the JSON `model` field is read, to route."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from llamacontroller.api.deps import InferenceDep, ServicesDep, parse_json_object, read_body, receive_body
from llamacontroller.api.dispatch import Origin, dispatch
from llamacontroller.api.errors import Dialect, error_response, render
from llamacontroller.api.frontdoor import header, relative_path
from llamacontroller.auth.principal import Principal
from llamacontroller.errors import BadRequest, LlamaControllerError
from llamacontroller.proxy.call import UpstreamCall
from llamacontroller.services.core import Services
from llamacontroller.services.models import visible_engine
from llamacontroller.supervisor.engine import Engine

router = APIRouter(tags=["openai"])
log = logging.getLogger(__name__)

# What the client calls -> what the engine is asked. The llama-server extras go to the same path.
PASSTHROUGH = {
    "/v1/chat/completions": "/v1/chat/completions",
    "/v1/completions": "/v1/completions",
    "/v1/embeddings": "/v1/embeddings",
    "/v1/rerank": "/v1/rerank",
    "/tokenize": "/tokenize",
    "/detokenize": "/detokenize",
    "/apply-template": "/apply-template",
}


async def proxy(origin: Origin, body: bytes, services: Services, principal: Principal, path: str) -> UpstreamCall:
    """One OpenAI passthrough request; called by `Passthrough` and by the routes below."""
    payload = parse_json_object(body)
    if b"_url" in body and not services.settings.auth.allow_remote_media:
        refuse_remote_media(payload)
    model = payload.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("'model' must be a string", param="model")
    if not model:
        model = _only_loaded_model(services, path)
    return await dispatch(
        origin,
        services,
        principal,
        dialect=Dialect.OPENAI,
        model=model,
        upstream_path=PASSTHROUGH[path],
        body=body,
        stream=payload.get("stream") is True,
    )


def refuse_remote_media(payload: dict[str, Any]) -> None:
    """llama-server fetches an `image_url` (or audio) URL itself: a caller could make the engine
    host request any address it can reach (SSRF). Only inline data: URIs pass, unless
    `auth.allow_remote_media` says otherwise."""
    messages = payload.get("messages")
    if not isinstance(messages, list):
        return
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for part in content:
            if not isinstance(part, dict):
                continue
            for kind in ("image_url", "input_audio", "audio_url", "video_url"):
                media = part.get(kind)
                url = media.get("url") if isinstance(media, dict) else media
                if isinstance(url, str) and not url.startswith("data:"):
                    raise BadRequest(
                        f"{kind}: only data: URIs are accepted (the engine would fetch a URL itself)",
                        param="messages",
                    )


class Passthrough:
    """Pure ASGI, inside the front door: the passthrough POSTs go straight to `proxy`, without
    FastAPI's routing, dependency resolution and Request objects (the CPU a cheap call like
    /tokenize costs the controller decides its throughput; docs/benchmarks.md). The front door
    has already checked the body cap and resolved the caller, for these paths as for every other;
    what is left is the scope check, the body and the call."""

    def __init__(self, app: ASGIApp, services: Callable[[], Services | None]) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = relative_path(scope) if scope["type"] == "http" and scope["method"] == "POST" else None
        services = self.services()
        principal: Principal | None = scope.get("state", {}).get("principal")
        if path not in PASSTHROUGH or services is None or principal is None:
            await self.app(scope, receive, send)
            return
        call: UpstreamCall | None = None
        try:
            principal.require("inference")
            body = await receive_body(receive, header(scope, b"content-length"))
            call = await proxy(Origin.from_headers(scope, scope["headers"]), body, services, principal, path)
            await call(scope, receive, send)
        except ClientDisconnect:
            return  # gone before its body arrived: nobody to answer
        except Exception as exc:
            if call is not None and call.status:
                raise  # the answer has started: only closing the connection can tell the client
            if isinstance(exc, LlamaControllerError):
                response = render(Dialect.OPENAI, exc)
            else:
                # Outside FastAPI's error handlers (app.py): a bug is answered here.
                log.exception("unhandled error on POST %s", path)
                response = error_response(
                    Dialect.OPENAI, 500, "internal error; see the controller log", "internal_error"
                )
            await response(scope, receive, send)


def _make_route(path: str) -> None:
    # `Passthrough` serves these paths before FastAPI routes them, with the same `proxy`: the
    # routes declare them in the OpenAPI schema (and would serve them, the same way, if a request
    # ever reached FastAPI without passing the dispatcher).
    async def route(request: Request, services: ServicesDep, principal: InferenceDep) -> Response:
        return await proxy(Origin.of(request), await read_body(request), services, principal, path)

    route.__name__ = "proxy_" + path.strip("/").replace("/", "_").replace("-", "_")
    router.add_api_route(path, route, methods=["POST"], response_class=Response)


for _path in PASSTHROUGH:
    _make_route(_path)


def _only_loaded_model(services: Services, path: str) -> str:
    """The llama.cpp extras (/tokenize...) are often called without a model: use the one loaded."""
    loaded = services.supervisor.loaded()
    if not path.startswith("/v1/") and len(loaded) == 1:
        return str(loaded[0].id)
    raise BadRequest("'model' is required", param="model")


def model_object(engine: Engine) -> dict[str, Any]:
    return {
        "id": engine.id,
        "object": "model",
        "created": int(time.time()),
        "owned_by": "llamacontroller",
        "name": engine.entry.name or engine.id,
        "aliases": engine.entry.aliases,
        "backend": engine.entry.backend,
        "state": engine.state.value,
    }


@router.get("/v1/models")
async def list_models(services: ServicesDep, principal: InferenceDep) -> dict[str, Any]:
    engines = [e for e in services.supervisor.engines.values() if principal.may_use(e.id)]
    return {"object": "list", "data": [model_object(e) for e in engines]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, services: ServicesDep, principal: InferenceDep) -> dict[str, Any]:
    return model_object(visible_engine(services, principal, model_id))
