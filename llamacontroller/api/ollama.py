"""Ollama-compatible routes. Inference goes through the same dispatch path as /v1; only the
translation (api/ollama_translate.py) and the error shape differ."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from llamacontroller.api import ollama_translate as tr
from llamacontroller.api.deps import InferenceDep, ServicesDep, actor_of, parse_json_object, read_body
from llamacontroller.api.dispatch import Origin, dispatch
from llamacontroller.api.errors import Dialect
from llamacontroller.auth.principal import Principal
from llamacontroller.catalog import hub
from llamacontroller.catalog.hub import Plan
from llamacontroller.catalog.jobs import Job, JobState
from llamacontroller.errors import BadRequest, UpstreamError
from llamacontroller.services import catalog
from llamacontroller.services.audit import record
from llamacontroller.services.core import Services
from llamacontroller.supervisor.engine import Engine
from llamacontroller.supervisor.memory import read_gguf

router = APIRouter(tags=["ollama"])

FOREVER = datetime(2318, 1, 1, tzinfo=UTC)  # what Ollama reports for keep_alive < 0


@router.api_route("/api/version", methods=["GET", "HEAD"])
async def version(services: ServicesDep) -> dict[str, str]:
    return {"version": services.settings.ollama_version}


# ------------------------------------------------------------------------------ metadata


def _tag(model_id: str) -> str:
    return model_id if ":" in model_id else f"{model_id}:latest"


def _file(engine: Engine) -> Path | None:
    path = Path(engine.entry.path) if engine.entry.path else None
    return path if path is not None and path.is_file() else None


def _digest(engine: Engine) -> str:
    """The file's sha256 when `make setup` recorded it beside the file; else a stable id."""
    path = _file(engine)
    if path is None:
        return hashlib.sha256(engine.id.encode()).hexdigest()
    stat = path.stat()
    return _file_digest(path, stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=256)
def _file_digest(path: Path, size: int, mtime_ns: int) -> str:
    # Cached per file version: Open WebUI asks /api/tags on every page load.
    marker = path.with_suffix(path.suffix + ".sha256")
    if marker.exists():
        return marker.read_text().split()[0]
    return hashlib.sha256(f"{path}:{size}:{mtime_ns}".encode()).hexdigest()


def _metadata(engine: Engine) -> dict[str, Any]:
    path = _file(engine)
    if path is None or engine.entry.backend != "llamacpp":
        return {}
    try:
        return read_gguf(path).metadata
    except (OSError, ValueError):
        return {}


def _details(engine: Engine, meta: dict[str, Any]) -> dict[str, Any]:
    from gguf.constants import LlamaFileType

    arch = meta.get("general.architecture", "")
    file_type = meta.get("general.file_type")
    try:
        quant = LlamaFileType(file_type).name.removeprefix("MOSTLY_") if file_type is not None else ""
    except ValueError:
        quant = str(file_type)
    return {
        "parent_model": "",
        "format": "gguf" if engine.entry.backend == "llamacpp" else engine.entry.backend,
        "family": arch,
        "families": [arch] if arch else None,
        "parameter_size": meta.get("general.size_label", ""),
        "quantization_level": quant,
    }


def _summary(engine: Engine) -> dict[str, Any]:
    path = _file(engine)
    stat = path.stat() if path else None
    return {
        "name": _tag(engine.id),
        "model": _tag(engine.id),
        "modified_at": datetime.fromtimestamp(stat.st_mtime, UTC).isoformat() if stat else tr.now_iso(),
        "size": stat.st_size if stat else 0,
        "digest": _digest(engine),
        "details": _details(engine, _metadata(engine)),
    }


@router.get("/api/tags")
async def tags(services: ServicesDep, principal: InferenceDep) -> dict[str, Any]:
    engines = [e for e in services.supervisor.engines.values() if principal.may_use(e.id)]
    return {"models": [_summary(e) for e in engines]}


@router.get("/api/ps")
async def ps(services: ServicesDep, principal: InferenceDep) -> dict[str, Any]:
    models = []
    for engine in services.supervisor.loaded():
        if not principal.may_use(engine.id):
            continue
        ttl = engine.ttl
        expires = FOREVER if ttl <= 0 else datetime.now(UTC) + timedelta(seconds=max(0.0, ttl - _idle(engine)))
        models.append(
            {
                **_summary(engine),
                "expires_at": expires.isoformat(),
                "size_vram": 0 if not engine.entry.gpus else engine.rss() or 0,
                "context_length": engine.entry.ctx_size,
            }
        )
    return {"models": models}


def _idle(engine: Engine) -> float:
    return 0.0 if engine.in_flight else time.monotonic() - engine.last_used


@router.post("/api/show")
async def show(request: Request, services: ServicesDep, principal: InferenceDep) -> dict[str, Any]:
    body = parse_json_object(await read_body(request))
    engine = _engine(services, principal, body.get("model") or body.get("name"))
    meta = _metadata(engine)
    template = meta.get("tokenizer.chat_template", "")
    capabilities = ["embedding"] if engine.entry.embedding else ["completion"]
    if isinstance(template, str) and "tools" in template:
        capabilities.append("tools")
    if any(k.startswith("tokenizer.ggml.fim_") for k in meta):
        capabilities.append("insert")
    stops = [f'stop "{s}"' for s in _stop_tokens(meta)]
    # Paths and upstream URLs are for those who manage models, not for every inference token.
    source = engine.entry.path or engine.entry.url if "models:manage" in principal.scopes else engine.id
    return {
        "license": meta.get("general.license", ""),
        "modelfile": f"FROM {source}\n",
        "parameters": "\n".join([f"num_ctx {engine.entry.ctx_size}", *stops]),
        "template": template if isinstance(template, str) else "",
        "details": _details(engine, meta),
        "model_info": {k: v for k, v in meta.items() if not isinstance(v, dict) and k != "tokenizer.chat_template"},
        "capabilities": capabilities,
        "modified_at": _summary(engine)["modified_at"],
    }


def _stop_tokens(meta: dict[str, Any]) -> list[str]:
    template = meta.get("tokenizer.chat_template")
    if not isinstance(template, str):
        return []
    return [t for t in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "</s>") if t in template]


def _engine(services: Any, principal: Any, name: Any) -> Engine:
    if not isinstance(name, str) or not name:
        raise BadRequest("model is required", param="model")
    engine: Engine = services.supervisor.resolve(name)
    principal.require_model(engine.id)
    return engine


# ------------------------------------------------------------------------------ inference


async def _generate_or_chat(request: Request, services: Any, principal: Any, kind: str) -> Response:
    began = time.perf_counter()
    body = parse_json_object(await read_body(request))
    engine = _engine(services, principal, body.get("model"))
    keep_alive = await _lifetime(request, services, principal, engine, body)
    stream = body.get("stream", True) is not False
    empty = (kind == "chat" and not body.get("messages")) or (kind == "generate" and not body.get("prompt"))
    if empty and not body.get("suffix"):
        return await _load_or_unload(services, engine, keep_alive, kind, began)
    if kind == "chat":
        path, upstream = "/v1/chat/completions", tr.chat_request(body)
    else:
        path, upstream = tr.generate_request(body)
    translator = tr.NDJSONTranslator(_tag(engine.id), kind=kind, stream=stream, began=began)
    return await _call(
        request, services, principal, engine, path, upstream, translator, stream=stream, keep_alive=keep_alive
    )


class _Unchanged:
    """keep_alive of a caller who may not change a shared model's lifetime: leave it alone."""


UNCHANGED = _Unchanged()
KeepAlive = float | None | _Unchanged


async def _lifetime(request: Request, services: Any, principal: Principal, engine: Engine, body: Any) -> KeepAlive:
    """The keep_alive this request may apply. Unloading, pinning or re-timing a model every
    caller shares needs `models:manage`; an inference-only caller is still served (Open WebUI
    sends keep_alive: 0 with every chat) and its keep_alive is ignored. Honoured changes are
    audited."""
    keep_alive = tr.parse_keep_alive(body.get("keep_alive"))  # malformed is a 400 for everyone
    if "models:manage" not in principal.scopes:
        return UNCHANGED
    if keep_alive is not None and _ttl_for(keep_alive) != engine.ttl_override:
        actor = actor_of(request, principal)
        await record(services, actor, "model.keep_alive", engine.id, after={"keep_alive": keep_alive})
    return keep_alive


def _ttl_for(keep_alive: float) -> float:
    # ttl 0 means "never unload" in our config; Ollama's 0 means "unload now", so use a tick.
    return 0.0 if keep_alive < 0 else max(keep_alive, 0.001)


def _apply_keep_alive(engine: Engine, keep_alive: KeepAlive) -> None:
    """Each Ollama request sets the idle TTL; one without keep_alive gets the configured ttl back."""
    if isinstance(keep_alive, _Unchanged):
        return
    engine.ttl_override = None if keep_alive is None else _ttl_for(keep_alive)


async def _load_or_unload(services: Any, engine: Engine, keep_alive: KeepAlive, kind: str, began: float) -> Response:
    piece: dict[str, Any] = {"model": _tag(engine.id), "created_at": tr.now_iso(), "done": True}
    piece["message" if kind == "chat" else "response"] = {"role": "assistant", "content": ""} if kind == "chat" else ""
    if keep_alive == 0:
        await services.supervisor.unload(engine.id, force=False)
        piece["done_reason"] = "unload"
    else:
        await engine.start()
        _apply_keep_alive(engine, keep_alive)
        piece["done_reason"] = "load"
        piece["total_duration"] = int((time.perf_counter() - began) * 1e9)
    return JSONResponse(piece)


@router.post("/api/generate")
async def generate(request: Request, services: ServicesDep, principal: InferenceDep) -> Response:
    return await _generate_or_chat(request, services, principal, "generate")


@router.post("/api/chat")
async def chat(request: Request, services: ServicesDep, principal: InferenceDep) -> Response:
    return await _generate_or_chat(request, services, principal, "chat")


async def _call(
    request: Request,
    services: Any,
    principal: Any,
    engine: Engine,
    path: str,
    upstream: dict[str, Any],
    translator: tr.NDJSONTranslator | tr.JSONTranslator,
    *,
    stream: bool = False,
    keep_alive: KeepAlive = UNCHANGED,
) -> Response:
    """Every Ollama inference call: an OpenAI-dialect request to the engine through `dispatch`."""
    upstream["model"] = engine.id

    def on_lease() -> None:
        if isinstance(translator, tr.NDJSONTranslator):
            translator.lease_at = time.perf_counter()  # the rest of the wait was the load
        _apply_keep_alive(engine, keep_alive)

    return await dispatch(
        Origin.of(request),
        services,
        principal,
        dialect=Dialect.OLLAMA,
        model=engine.id,
        upstream_path=path,
        body=json.dumps(upstream).encode(),
        stream=stream,
        translator=translator,
        on_lease=on_lease,
        # chat/generate are always streamed from the engine, then joined if the client asked so
        upstream_stream=isinstance(translator, tr.NDJSONTranslator),
    )


@router.post("/api/embed")
async def embed(request: Request, services: ServicesDep, principal: InferenceDep) -> Response:
    began = time.perf_counter()
    body = parse_json_object(await read_body(request))
    engine = _engine(services, principal, body.get("model"))
    translator = tr.JSONTranslator(tr.embed_response(_tag(engine.id), began))
    keep_alive = await _lifetime(request, services, principal, engine, body)
    upstream = tr.embed_request(body)
    return await _call(
        request, services, principal, engine, "/v1/embeddings", upstream, translator, keep_alive=keep_alive
    )


@router.post("/api/embeddings")
async def embeddings(request: Request, services: ServicesDep, principal: InferenceDep) -> Response:
    """The legacy endpoint: one `prompt` in, one `embedding` out."""
    body = parse_json_object(await read_body(request))
    engine = _engine(services, principal, body.get("model"))
    if not isinstance(body.get("prompt"), str):
        raise BadRequest("prompt must be a string", param="prompt")
    upstream = {"input": [body["prompt"]], "encoding_format": "float"}
    translator = tr.JSONTranslator(tr.legacy_embedding_response)
    return await _call(request, services, principal, engine, "/v1/embeddings", upstream, translator)


# --------------------------------------------------------------------------- pull, delete


async def _managed_model(request: Request, principal: Principal) -> tuple[dict[str, Any], str]:
    """The body and the model it names, for a caller with models:manage (checked first)."""
    principal.require("models:manage")
    body = parse_json_object(await read_body(request))
    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest("model is required", param="model")
    return body, name


@router.post("/api/pull")
async def pull(request: Request, services: ServicesDep, principal: InferenceDep) -> Response:
    """`hf.co/org/repo:QUANT` from the Hugging Face Hub, streaming Ollama's progress statuses."""
    body, name = await _managed_model(request, principal)
    if not name.lower().startswith(("hf.co/", "huggingface.co/", "https://hf.co/", "https://huggingface.co/")):
        raise BadRequest(f"only Hugging Face models can be pulled here: hf.co/org/repo:QUANT, not {name[:80]!r}")
    actor = actor_of(request, principal)
    source = hub.parse_source(name)
    have = services.catalog.by_source(source.name)
    job = None if have else services.catalog.active_job(source.name) or await catalog.pull(services, actor, name)
    if body.get("stream", True) is False:
        if job is not None:
            async for _ in services.catalog.follow(job.id, interval=0.5):
                pass
            _raise_failed(job)
        return JSONResponse({"status": "success"})
    return StreamingResponse(_pull_statuses(services, job), media_type="application/x-ndjson")


async def _pull_statuses(services: Services, job: Job | None) -> AsyncIterator[bytes]:
    def line(data: dict[str, Any]) -> bytes:
        return json.dumps(data).encode() + b"\n"

    yield line({"status": "pulling manifest"})
    if job is not None:
        files = Plan.from_json(dict(job.plan)).files
        sent: dict[str, int] = {}
        async for view in services.catalog.follow(job.id):
            before = 0
            for f in files:  # files come one after another: the job's bytes fill them in order
                completed = max(0, min(f.size, view["bytes"] - before))
                before += f.size
                if (completed == 0 and f.path not in sent) or sent.get(f.path) == completed:
                    continue
                sent[f.path] = completed
                digest = f.sha256 or hashlib.sha256(f.path.encode()).hexdigest()
                status = {"status": f"pulling {digest[:12]}", "digest": f"sha256:{digest}"}
                yield line({**status, "total": f.size, "completed": completed})
        if job.state is not JobState.DONE:
            yield line({"error": job.error or f"pull {job.state.value}"})
            return
        yield line({"status": "verifying sha256 digest"})
        yield line({"status": "writing manifest"})
    yield line({"status": "success"})


def _raise_failed(job: Job) -> None:
    if job.state is not JobState.DONE:
        raise UpstreamError(job.error or f"pull {job.state.value}")


@router.delete("/api/delete")
async def delete(request: Request, services: ServicesDep, principal: InferenceDep) -> Response:
    _, name = await _managed_model(request, principal)
    await catalog.delete(services, actor_of(request, principal), name)
    return Response(status_code=200)
