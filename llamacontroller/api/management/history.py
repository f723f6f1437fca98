"""/api/v1/audit and /api/v1/usage: admins only."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from llamacontroller.api.deps import AdminDep, ServicesDep
from llamacontroller.api.management.params import MAX_ID, Limit, Offset
from llamacontroller.services import history
from llamacontroller.services.history import AuditRow, GroupBy, UsageFilter, UsageGroup, UsageRow

router = APIRouter()


class AuditPage(BaseModel):
    entries: list[AuditRow]
    limit: int
    offset: int


class UsagePage(BaseModel):
    entries: list[UsageRow]
    limit: int
    offset: int


class UsageGroups(BaseModel):
    group_by: GroupBy
    groups: list[UsageGroup]


@router.get("/audit")
async def list_audit(
    services: ServicesDep,
    principal: AdminDep,
    actor: Annotated[str | None, Query(max_length=64)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    target: Annotated[str | None, Query(max_length=256)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> AuditPage:
    entries = await history.audit_entries(
        services, actor=actor, action=action, target=target, since=since, until=until, limit=limit, offset=offset
    )
    return AuditPage(entries=entries, limit=limit, offset=offset)


@router.get("/usage", response_model=UsagePage | UsageGroups)
async def list_usage(
    services: ServicesDep,
    principal: AdminDep,
    token_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    model: Annotated[str | None, Query(max_length=128)] = None,
    username: Annotated[str | None, Query(max_length=64)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    group_by: Annotated[GroupBy | None, Query(description="Sum per token, model or day instead of rows")] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> UsagePage | UsageGroups:
    which = UsageFilter(token_id=token_id, model=model, username=username, since=since, until=until)
    if group_by is None:
        entries = await history.usage_entries(services, which, limit=limit, offset=offset)
        return UsagePage(entries=entries, limit=limit, offset=offset)
    return UsageGroups(group_by=group_by, groups=await history.usage_groups(services, group_by, which))
