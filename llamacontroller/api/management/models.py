"""/api/v1/models*, /api/v1/events: what is configured and running; load, unload, switch; logs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict
from starlette.responses import StreamingResponse

from llamacontroller.api.deps import ManagerActor, ManagerDep, PrincipalDep, ServicesDep
from llamacontroller.api.management.params import ModelName
from llamacontroller.services import models as service
from llamacontroller.services.models import ModelInfo, ModelStatus

router = APIRouter()

SSE_KEEPALIVE = 15.0


class ModelAction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_id: ModelName


class SwitchAction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    from_id: ModelName | None = None
    to_id: ModelName


class ModelList(BaseModel):
    models: list[ModelInfo]


class Memory(BaseModel):
    budget: int | str
    available: int | None


class StatusReport(BaseModel):
    models: list[ModelStatus]
    max_loaded_models: int
    memory: Memory
    gpus: list[dict[str, Any]]


class LogLine(BaseModel):
    seq: int
    time: float
    text: str


class LogTail(BaseModel):
    model: str
    lines: list[LogLine]


@router.get("/models", response_model=ModelList, response_model_exclude_unset=True)
async def list_models(services: ServicesDep, principal: PrincipalDep) -> ModelList:
    return ModelList(models=service.model_infos(services, principal))


@router.get("/models/status")
async def models_status(services: ServicesDep, principal: ManagerDep) -> StatusReport:
    return StatusReport(models=service.statuses(services, principal), **service.memory_overview(services))


@router.post("/models/load")
async def load(body: ModelAction, services: ServicesDep, actor: ManagerActor) -> ModelStatus:
    engine = await service.load(services, actor, body.model_id)
    return ModelStatus(**engine.status())


@router.post("/models/unload")
async def unload(body: ModelAction, services: ServicesDep, actor: ManagerActor) -> ModelStatus:
    engine = await service.unload(services, actor, body.model_id)
    return ModelStatus(**engine.status())


@router.post("/models/switch")
async def switch(body: SwitchAction, services: ServicesDep, actor: ManagerActor) -> ModelStatus:
    engine = await service.switch(services, actor, body.from_id, body.to_id)
    return ModelStatus(**engine.status())


@router.get("/models/{model_id:path}/logs", response_model=LogTail)
async def model_logs(
    model_id: str,
    request: Request,
    services: ServicesDep,
    principal: ManagerDep,
    lines: int = Query(200, ge=0, le=5000),
    follow: bool = Query(False, description="Stream new lines (SSE); so does Accept: text/event-stream"),
) -> Any:
    engine = service.engine_for(services, principal, model_id)
    tail = engine.log.tail(lines)
    if not follow and "text/event-stream" not in request.headers.get("accept", ""):
        return LogTail(model=engine.id, lines=[LogLine(seq=ln.seq, time=ln.time, text=ln.text) for ln in tail])
    since = tail[0].seq - 1 if tail else engine.log.last_seq  # lines=0: only what comes next

    async def events() -> AsyncIterator[dict[str, Any]]:
        async for line in engine.log.follow(since):
            yield {"seq": line.seq, "time": line.time, "text": line.text}

    return sse(events())


@router.get("/events", response_class=StreamingResponse)
async def events(services: ServicesDep, principal: ManagerDep) -> StreamingResponse:
    """Server-sent events: `{"type": "model_state", "model", "from", "to", "reason", "time"}`."""

    async def allowed() -> AsyncIterator[dict[str, Any]]:
        async for event in services.supervisor.events():
            if principal.may_use(str(event.get("model"))):
                yield event

    return sse(allowed() if principal.models else services.supervisor.events())


def sse(source: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    """Server-sent events with a keep-alive comment every 15 s (proxies drop silent streams)."""

    async def body() -> AsyncIterator[bytes]:
        yield b": connected\n\n"
        iterator = source.__aiter__()
        # The pending __anext__ survives a keep-alive: cancelling it (as wait_for does) would
        # close the source, and the stream with it, after the first quiet 15 s.
        pending: asyncio.Future[dict[str, Any]] | None = None
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(iterator.__anext__())
                done, _ = await asyncio.wait({pending}, timeout=SSE_KEEPALIVE)
                if not done:
                    yield b": keep-alive\n\n"
                    continue
                finished, pending = pending, None
                try:
                    item = finished.result()
                except StopAsyncIteration:
                    return
                yield b"data: " + json.dumps(item).encode() + b"\n\n"
        finally:
            if pending is not None:
                pending.cancel()

    return StreamingResponse(
        body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
