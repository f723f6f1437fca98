"""/api/v1/tokens: a caller's own tokens (an admin's: anyone's)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from llamacontroller.api.deps import ActorDep, ServicesDep
from llamacontroller.api.management.params import MAX_ID, ModelName, RowId
from llamacontroller.services import accounts
from llamacontroller.services.accounts import TokenCreated, TokenPublic

router = APIRouter()


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    user: str | None = Field(None, max_length=64, description="Owner (admins only); default: the caller")
    scopes: list[Literal["inference", "models:manage", "admin"]] | None = Field(
        None, max_length=3, description="Default: the owner's role's scopes that the caller has too"
    )
    models: list[ModelName] = Field(
        default_factory=list, max_length=256, description="Default: the caller's own model restriction"
    )
    expires_in: str | None = Field(None, max_length=64, description="e.g. 30d; never later than the caller's")
    rpm_limit: int | None = Field(None, gt=0, le=MAX_ID)
    tpm_limit: int | None = Field(None, gt=0, le=MAX_ID)
    parallel_limit: int | None = Field(None, gt=0, le=MAX_ID)
    trusted_frontend: bool = Field(False, description="Believe X-OpenWebUI-User-* headers (admins only)")


class TokenList(BaseModel):
    tokens: list[TokenPublic]


@router.get("/tokens")
async def list_tokens(
    services: ServicesDep,
    actor: ActorDep,
    all: bool = Query(False, description="Every user's tokens (admins only)"),
) -> TokenList:
    return TokenList(tokens=await accounts.list_tokens(services, actor, every_user=all))


@router.post("/tokens", status_code=201)
async def create_token(body: TokenCreate, services: ServicesDep, actor: ActorDep) -> TokenCreated:
    return await accounts.create_token(
        services,
        actor,
        body.name,
        owner=body.user,
        scopes=body.scopes,
        models=[services.supervisor.resolve(m).id for m in body.models],
        expires_in=body.expires_in,
        rpm_limit=body.rpm_limit,
        tpm_limit=body.tpm_limit,
        parallel_limit=body.parallel_limit,
        trusted_frontend=body.trusted_frontend,
    )


@router.delete("/tokens/{token_id}")
async def revoke_token(token_id: RowId, services: ServicesDep, actor: ActorDep) -> TokenPublic:
    return await accounts.revoke_token(services, actor, token_id)
