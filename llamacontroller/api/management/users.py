"""/api/v1/users: admins only."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from llamacontroller.api.deps import AdminActor, AdminDep, ServicesDep
from llamacontroller.api.management.params import RowId
from llamacontroller.services import accounts
from llamacontroller.services.accounts import UserPublic

router = APIRouter()

Role = Literal["admin", "operator", "user"]


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(max_length=64)
    password: str = Field(max_length=1024)
    role: Role = "user"


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    disabled: bool | None = None
    password: str | None = Field(None, max_length=1024)


class UserList(BaseModel):
    users: list[UserPublic]


@router.get("/users")
async def list_users(services: ServicesDep, principal: AdminDep) -> UserList:
    return UserList(users=await accounts.list_users(services))


@router.post("/users", status_code=201)
async def create_user(body: UserCreate, services: ServicesDep, actor: AdminActor) -> UserPublic:
    return await accounts.create_user(services, actor, body.username, body.password, body.role)


@router.patch("/users/{user_id}")
async def update_user(user_id: RowId, body: UserUpdate, services: ServicesDep, actor: AdminActor) -> UserPublic:
    return await accounts.update_user(
        services, actor, user_id, role=body.role, disabled=body.disabled, password=body.password
    )


@router.delete("/users/{user_id}")
async def delete_user(user_id: RowId, services: ServicesDep, actor: AdminActor) -> UserPublic:
    return await accounts.delete_user(services, actor, user_id)
