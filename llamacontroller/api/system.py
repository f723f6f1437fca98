"""Liveness, readiness and metrics."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from starlette.responses import JSONResponse, Response

from llamacontroller.api.deps import ServicesDep
from llamacontroller.services.core import check_database

router = APIRouter(tags=["system"])
log = logging.getLogger(__name__)


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(services: ServicesDep) -> Response:
    body: dict[str, Any] = {"status": "ready", "models": len(services.supervisor.engines)}
    try:
        await check_database(services)
    except Exception:
        # The cause goes to the log, not to anonymous callers (it named hosts and users).
        log.exception("readiness: the database does not answer")
        return JSONResponse({"status": "not ready", "reason": "database unavailable"}, status_code=503)
    return JSONResponse(body)


@router.get("/metrics")
async def metrics(services: ServicesDep) -> Response:
    return Response(await services.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
