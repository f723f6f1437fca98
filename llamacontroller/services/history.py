"""The audit and usage logs, as the management API and the dashboard query them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict
from sqlalchemy import Date, String, cast, func, select, type_coerce

from llamacontroller.db.models import AuditEntry, UsageEntry
from llamacontroller.services.core import Store

GroupBy = Literal["token", "model", "day"]

# Times are stored in UTC; SQLite hands them back without a zone. Answers always carry it (RFC 3339).
UtcDatetime = Annotated[datetime, AfterValidator(lambda v: v if v.tzinfo else v.replace(tzinfo=UTC))]


@dataclass(frozen=True, slots=True)
class UsageFilter:
    """Which usage rows: each given field must match; time in [since, until)."""

    token_id: int | None = None
    model: str | None = None
    username: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def conditions(self) -> list[Any]:
        equal = {UsageEntry.token_id: self.token_id, UsageEntry.model: self.model, UsageEntry.username: self.username}
        return _filters(equal, UsageEntry.time, self.since, self.until)


class AuditRow(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    time: UtcDatetime
    actor: str | None
    token_id: int | None
    client_ip: str | None
    user_agent: str | None
    action: str
    target: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    result: str


class UsageRow(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    time: UtcDatetime
    request_id: str | None
    token_id: int | None
    username: str | None
    model: str | None
    endpoint: str
    dialect: str
    status: int
    prompt_tokens: int | None
    completion_tokens: int | None
    ttft_ms: float | None
    duration_ms: float
    client_ip: str | None
    client_user: dict[str, Any] | None


class UsageGroup(BaseModel):
    key: str | None
    requests: int
    prompt_tokens: int
    completion_tokens: int


async def audit_entries(
    store: Store,
    *,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[AuditRow]:
    """Newest first."""
    filters = _filters(
        {AuditEntry.actor: actor, AuditEntry.action: action, AuditEntry.target: target}, AuditEntry.time, since, until
    )
    query = select(AuditEntry).where(*filters).order_by(AuditEntry.id.desc()).limit(limit).offset(offset)
    async with store.sessions() as db:
        return [AuditRow.model_validate(r) for r in await db.scalars(query)]


async def usage_entries(
    store: Store, which: UsageFilter = UsageFilter(), *, limit: int = 100, offset: int = 0
) -> list[UsageRow]:
    """Newest first."""
    query = select(UsageEntry).where(*which.conditions()).order_by(UsageEntry.id.desc()).limit(limit).offset(offset)
    async with store.sessions() as db:
        return [UsageRow.model_validate(r) for r in await db.scalars(query)]


async def usage_groups(store: Store, group_by: GroupBy, which: UsageFilter = UsageFilter()) -> list[UsageGroup]:
    """Requests and tokens summed per token, model or day, in key order."""
    day: Any = (
        type_coerce(func.date(UsageEntry.time), String)  # SQLite: CAST(.. AS DATE) yields a number
        if store.db.dialect.name == "sqlite"
        else cast(UsageEntry.time, Date)
    )
    key = {"token": UsageEntry.token_id, "model": UsageEntry.model, "day": day}[group_by]
    query: Any = (
        select(
            key.label("key"),
            func.count().label("requests"),
            func.coalesce(func.sum(UsageEntry.prompt_tokens), 0).label("prompt_tokens"),
            func.coalesce(func.sum(UsageEntry.completion_tokens), 0).label("completion_tokens"),
        )
        .where(*which.conditions())
        .group_by(key)
        .order_by(key)
    )
    async with store.sessions() as db:
        rows = (await db.execute(query)).all()
    return [
        UsageGroup(
            key=str(r.key) if r.key is not None else None,
            requests=r.requests,
            prompt_tokens=r.prompt_tokens,
            completion_tokens=r.completion_tokens,
        )
        for r in rows
    ]


def _filters(equal: dict[Any, Any], time: Any, since: datetime | None, until: datetime | None) -> list[Any]:
    """WHERE conditions for the log queries: given columns equal their values, time in [since, until)."""
    conditions = [column == value for column, value in equal.items() if value is not None]
    if since:
        conditions.append(time >= since)
    if until:
        conditions.append(time < until)
    return conditions
