"""OpenAI-compatible routes: the body goes to the engine as it came, the answer comes back as the
engine sent it. Only the JSON `model` field is read, to route."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from llamacontroller.api.deps import InferenceDep, ServicesDep, parse_json_object, read_body
from llamacontroller.api.dispatch import Origin, dispatch
from llamacontroller.api.errors import Dialect
from llamacontroller.auth.principal import Principal
from llamacontroller.errors import BadRequest, ModelNotFound
from llamacontroller.proxy.call import UpstreamCall
from llamacontroller.supervisor.engine import Engine

if TYPE_CHECKING:
    from llamacontroller.app import Services

router = APIRouter(tags=["openai"])

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


def proxy(origin: Origin, body: bytes, services: Services, principal: Principal, path: str) -> UpstreamCall:
    """One OpenAI passthrough request; called by the routes below and by the fast lane."""
    payload = parse_json_object(body)
    if b"_url" in body and not services.settings.auth.allow_remote_media:
        refuse_remote_media(payload)
    model = payload.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("'model' must be a string", param="model")
    if not model:
        model = _only_loaded_model(services, path)
    return dispatch(
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


def _make_route(path: str) -> None:
    # Requests with an API token normally take the fast lane (api/fastlane.py); these routes serve
    # the rest (session cookies, HTTP/1.0, pipelined or chunked requests) and the OpenAPI schema.
    async def route(request: Request, services: ServicesDep, principal: InferenceDep) -> Response:
        return proxy(Origin.of(request), await read_body(request), services, principal, path)

    route.__name__ = "proxy_" + path.strip("/").replace("/", "_").replace("-", "_")
    router.add_api_route(path, route, methods=["POST"], response_class=Response)


for _path in PASSTHROUGH:
    _make_route(_path)


def _only_loaded_model(services: Any, path: str) -> str:
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
    engine = services.supervisor.resolve(model_id)
    if not principal.may_use(engine.id):
        raise ModelNotFound(f"model {model_id!r} not found", param="model")
    return model_object(engine)
