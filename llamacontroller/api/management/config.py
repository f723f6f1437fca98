"""/api/v1/config/reload: admins only."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from llamacontroller.api.deps import AdminActor, ServicesDep
from llamacontroller.services import models

router = APIRouter()


class Reloaded(BaseModel):
    status: str = "reloaded"
    added: list[str]
    removed: list[str]
    changed: list[str]


@router.post("/config/reload")
async def reload_config(services: ServicesDep, actor: AdminActor) -> Reloaded:
    return Reloaded(**await models.reload_config(services, actor))
