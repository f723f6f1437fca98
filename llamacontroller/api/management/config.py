"""/api/v1/config/reload: admins only."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from llamacontroller.api.deps import AdminActor, ServicesDep
from llamacontroller.services import models

router = APIRouter()


class Reloaded(BaseModel):
    status: str = "reloaded"
    added: list[str]
    removed: list[str]
    changed: list[str]
    restarted: list[str] = Field(description="Models whose engine restarts (after draining) for the change")
    settings: list[str] = Field(description="Settings files besides the models that changed: auth, llamacpp")


@router.post("/config/reload")
async def reload_config(services: ServicesDep, actor: AdminActor) -> Reloaded:
    return Reloaded(**await models.reload_config(services, actor))
