"""Management API under /api/v1: models, tokens, users, audit, usage, config reload."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Date, String, cast, func, select, type_coerce
from starlette.responses import StreamingResponse

from llamacontroller.api.deps import AdminDep, ManagerDep, PrincipalDep, ServicesDep, client_ip
from llamacontroller.api.errors import ERROR_RESPONSES
from llamacontroller.auth.principal import Principal
from llamacontroller.db.models import ApiToken, AuditEntry, UsageEntry, User
from llamacontroller.errors import BadRequest, Forbidden, LlamaControllerError
from llamacontroller.supervisor.engine import Engine
from llamacontroller.supervisor.memory import available_bytes, gpu_inventory

router = APIRouter(prefix="/api/v1", tags=["management"], responses=ERROR_RESPONSES)

SSE_KEEPALIVE = 15.0
# Bounded so that no value overflows a database integer (SQLite and PostgreSQL alike: a huge
# offset was a 500 that also reset the keep-alive connection).
MAX_ID = 2**31 - 1
# Plain defaults (not Query(...) objects) so the dashboard can call these handlers directly.
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=10**9)]
RowId = Annotated[int, Path(ge=1, le=MAX_ID)]
ModelName = Annotated[str, Field(min_length=1, max_length=128)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelAction(_In):
    model_id: ModelName


class SwitchAction(_In):
    from_id: ModelName | None = None
    to_id: ModelName


class TokenCreate(_In):
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


class UserCreate(_In):
    username: str = Field(max_length=64)
    password: str = Field(max_length=1024)
    role: Literal["admin", "operator", "user"] = "user"


class UserUpdate(_In):
    role: Literal["admin", "operator", "user"] | None = None
    disabled: bool | None = None
    password: str | None = Field(None, max_length=1024)


async def audit(
    services: Any,
    request: Request,
    principal: Principal | None,
    action: str,
    target: str | None,
    *,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    result: str = "ok",
) -> None:
    await services.audit.record(
        action,
        actor=principal.username if principal else None,
        token_id=principal.token_id if principal else None,
        client_ip=client_ip(request),
        user_agent=(request.headers.get("user-agent") or "")[:256] or None,
        target=target,
        before=before,
        after=after,
        result=result[:256],
    )


async def audited(services: Any, request: Request, principal: Principal, action: str, target: str, work: Any) -> Any:
    """Run a model action and audit it, whether it worked or not."""
    try:
        result = await work
    except LlamaControllerError as exc:
        await audit(services, request, principal, action, target, result=f"error: {exc.message}")
        raise
    await audit(services, request, principal, action, target)
    return result


# ------------------------------------------------------------------------------- models


# What a caller without models:manage sees of a model: no paths, flags, URLs or environment.
PUBLIC_FIELDS = {"id", "name", "backend", "aliases", "ctx_size", "embedding", "reranking"}


@router.get("/models")
async def models(services: ServicesDep, principal: PrincipalDep) -> dict[str, Any]:
    fields = None if "models:manage" in principal.scopes else PUBLIC_FIELDS
    return {
        "models": [
            {**e.entry.model_dump(include=fields, exclude={"env"}), "state": e.state.value}
            for e in services.supervisor.engines.values()
            if principal.may_use(e.id)
        ]
    }


def _engine_for(services: Any, principal: Principal, name: str) -> Engine:
    """The engine a management call names; a token restricted to other models gets a 403."""
    engine: Engine = services.supervisor.resolve(name)
    principal.require_model(engine.id)
    return engine


@router.get("/models/status")
async def models_status(services: ServicesDep, principal: ManagerDep) -> dict[str, Any]:
    budget = services.settings.models.memory_budget
    return {
        "models": [s for s in services.supervisor.status() if principal.may_use(s["id"])],
        "max_loaded_models": services.settings.models.max_loaded_models,
        "memory": {"budget": budget, "available": available_bytes()},
        "gpus": gpu_inventory(),
    }


@router.post("/models/load")
async def load(body: ModelAction, request: Request, services: ServicesDep, principal: ManagerDep) -> dict[str, Any]:
    engine = _engine_for(services, principal, body.model_id)
    await audited(services, request, principal, "model.load", engine.id, services.supervisor.load(engine.id))
    return engine.status()


@router.post("/models/unload")
async def unload(body: ModelAction, request: Request, services: ServicesDep, principal: ManagerDep) -> dict[str, Any]:
    engine = _engine_for(services, principal, body.model_id)
    await audited(services, request, principal, "model.unload", engine.id, services.supervisor.unload(engine.id))
    return engine.status()


@router.post("/models/switch")
async def switch(body: SwitchAction, request: Request, services: ServicesDep, principal: ManagerDep) -> dict[str, Any]:
    _engine_for(services, principal, body.to_id)
    if body.from_id is not None:
        _engine_for(services, principal, body.from_id)
    elif principal.models:
        # "Switch from whatever is loaded" could stop a model this token may not touch.
        raise Forbidden("a token restricted to some models must name from_id", param="from_id")
    target = f"{body.from_id or '*'} -> {body.to_id}"
    engine = await audited(
        services, request, principal, "model.switch", target, services.supervisor.switch(body.from_id, body.to_id)
    )
    return engine.status()  # type: ignore[no-any-return]


@router.get("/models/{model_id:path}/logs", response_model=None)
async def model_logs(
    model_id: str,
    request: Request,
    services: ServicesDep,
    principal: ManagerDep,
    lines: int = Query(200, ge=0, le=5000),
    follow: bool = False,
) -> Any:
    engine = _engine_for(services, principal, model_id)
    if not follow and "text/event-stream" not in request.headers.get("accept", ""):
        return {
            "model": engine.id,
            "lines": [{"seq": ln.seq, "time": ln.time, "text": ln.text} for ln in engine.log.tail(lines)],
        }
    tail = engine.log.tail(lines)
    since = tail[0].seq - 1 if tail else engine.log.last_seq  # lines=0: only what comes next

    async def events() -> AsyncIterator[dict[str, Any]]:
        async for line in engine.log.follow(since):
            yield {"seq": line.seq, "time": line.time, "text": line.text}

    return sse(events())


@router.get("/events")
async def events(services: ServicesDep, principal: ManagerDep) -> StreamingResponse:
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
        while True:
            try:
                item = await asyncio.wait_for(iterator.__anext__(), SSE_KEEPALIVE)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            except StopAsyncIteration:
                return
            yield b"data: " + json.dumps(item).encode() + b"\n\n"

    return StreamingResponse(
        body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


# ------------------------------------------------------------------------------- tokens


def token_public(row: ApiToken, username: str | None = None) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "prefix": row.prefix,
        "user": username,
        "scopes": row.scopes.split(),
        "models": row.models.split(),
        "created_at": row.created_at,
        "expires_at": row.expires_at,
        "last_used_at": row.last_used_at,
        "revoked_at": row.revoked_at,
        "rpm_limit": row.rpm_limit,
        "tpm_limit": row.tpm_limit,
        "parallel_limit": row.parallel_limit,
        "trusted_frontend": row.trusted_frontend,
    }


@router.get("/tokens")
async def list_tokens(services: ServicesDep, principal: PrincipalDep, all: bool = False) -> dict[str, Any]:
    if principal.user_id is None:
        raise Forbidden("anonymous callers have no tokens")
    owner = None if (all and principal.is_admin) else principal.user_id
    return {"tokens": [token_public(t, u) for t, u in await services.auth.list_tokens(owner)]}


@router.post("/tokens", status_code=201)
async def create_token(
    body: TokenCreate, request: Request, services: ServicesDep, principal: PrincipalDep
) -> dict[str, Any]:
    if principal.user_id is None or principal.username is None:
        raise Forbidden("anonymous callers cannot create tokens")
    owner_name = body.user or principal.username
    if owner_name != principal.username and not principal.is_admin:
        raise Forbidden("only admins create tokens for other users")
    owner = await services.auth.get_user(owner_name)
    created = await services.auth.create_token(
        owner,
        body.name,
        list(body.scopes) if body.scopes else None,
        [services.supervisor.resolve(m).id for m in body.models],
        body.expires_in,
        {"rpm_limit": body.rpm_limit, "tpm_limit": body.tpm_limit, "parallel_limit": body.parallel_limit},
        issuer=principal,
        trusted_frontend=body.trusted_frontend,
    )
    public = token_public(created.row, owner.username)
    await audit(services, request, principal, "token.create", f"token:{created.row.id}", after=jsonable(public))
    return {**public, "token": created.token}


@router.delete("/tokens/{token_id}")
async def revoke_token(
    token_id: RowId, request: Request, services: ServicesDep, principal: PrincipalDep
) -> dict[str, Any]:
    if principal.user_id is None:
        raise Forbidden("anonymous callers have no tokens")
    owner = None if principal.is_admin else principal.user_id
    row = await services.auth.revoke_token(token_id, owner_id=owner)
    await audit(services, request, principal, "token.revoke", f"token:{token_id}")
    return token_public(row)


# -------------------------------------------------------------------------------- users


def user_public(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "role": user.role,
        "disabled": user.disabled,
        "created_at": user.created_at,
        "last_login_at": user.last_login_at,
    }


@router.get("/users")
async def list_users(services: ServicesDep, principal: AdminDep) -> dict[str, Any]:
    return {"users": [user_public(u) for u in await services.auth.list_users()]}


@router.post("/users", status_code=201)
async def create_user(body: UserCreate, request: Request, services: ServicesDep, principal: AdminDep) -> dict[str, Any]:
    user = await services.auth.create_user(body.username, body.password, body.role)
    await audit(services, request, principal, "user.create", f"user:{user.username}", after={"role": user.role})
    return user_public(user)


@router.patch("/users/{user_id}")
async def update_user(
    user_id: RowId, body: UserUpdate, request: Request, services: ServicesDep, principal: AdminDep
) -> dict[str, Any]:
    if user_id == principal.user_id and (body.role not in (None, "admin") or body.disabled):
        raise BadRequest("admins cannot demote or disable themselves")
    user, before = await services.auth.update_user(user_id, **body.model_dump())
    after = {"role": user.role, "disabled": user.disabled, **({"password": "changed"} if body.password else {})}
    await audit(services, request, principal, "user.update", f"user:{user.username}", before=before, after=after)
    return user_public(user)


@router.delete("/users/{user_id}")
async def delete_user(user_id: RowId, request: Request, services: ServicesDep, principal: AdminDep) -> dict[str, Any]:
    if user_id == principal.user_id:
        raise BadRequest("admins cannot delete themselves")
    user = await services.auth.delete_user(user_id)
    await audit(services, request, principal, "user.delete", f"user:{user.username}", before={"role": user.role})
    return user_public(user)


# -------------------------------------------------------------------------- audit, usage


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
) -> dict[str, Any]:
    filters = _filters(
        {AuditEntry.actor: actor, AuditEntry.action: action, AuditEntry.target: target}, AuditEntry.time, since, until
    )
    query = select(AuditEntry).where(*filters).order_by(AuditEntry.id.desc())
    async with services.sessions() as db:
        rows = list(await db.scalars(query.limit(limit).offset(offset)))
    return {"entries": [_row(r) for r in rows], "limit": limit, "offset": offset}


@router.get("/usage")
async def list_usage(
    services: ServicesDep,
    principal: AdminDep,
    token_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    model: Annotated[str | None, Query(max_length=128)] = None,
    username: Annotated[str | None, Query(max_length=64)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    group_by: Literal["token", "model", "day"] | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> dict[str, Any]:
    filters = _filters(
        {UsageEntry.token_id: token_id, UsageEntry.model: model, UsageEntry.username: username},
        UsageEntry.time,
        since,
        until,
    )
    async with services.sessions() as db:
        if group_by is None:
            query = select(UsageEntry).where(*filters).order_by(UsageEntry.id.desc()).limit(limit).offset(offset)
            return {"entries": [_row(r) for r in await db.scalars(query)], "limit": limit, "offset": offset}
        day: Any = (
            type_coerce(func.date(UsageEntry.time), String)  # SQLite: CAST(.. AS DATE) yields a number
            if services.db.dialect.name == "sqlite"
            else cast(UsageEntry.time, Date)
        )
        key = {"token": UsageEntry.token_id, "model": UsageEntry.model, "day": day}[group_by]
        grouped: Any = (
            select(
                key.label("key"),
                func.count().label("requests"),
                func.coalesce(func.sum(UsageEntry.prompt_tokens), 0).label("prompt_tokens"),
                func.coalesce(func.sum(UsageEntry.completion_tokens), 0).label("completion_tokens"),
            )
            .where(*filters)
            .group_by(key)
            .order_by(key)
        )
        groups = [dict(r._mapping) for r in (await db.execute(grouped)).all()]
    return {
        "group_by": group_by,
        "groups": [{**g, "key": str(g["key"]) if g["key"] is not None else None} for g in groups],
    }


def _filters(equal: dict[Any, Any], time: Any, since: datetime | None, until: datetime | None) -> list[Any]:
    """WHERE conditions for the log queries: given columns equal their values, time in [since, until)."""
    conditions = [column == value for column, value in equal.items() if value is not None]
    if since:
        conditions.append(time >= since)
    if until:
        conditions.append(time < until)
    return conditions


def _row(row: Any) -> dict[str, Any]:
    return {c.name: getattr(row, c.name) for c in row.__table__.columns}


def jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(data, default=str))  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------- config


@router.post("/config/reload")
async def reload_config(request: Request, services: ServicesDep, principal: AdminDep) -> dict[str, Any]:
    from llamacontroller.config import ConfigError, load_settings

    try:
        fresh = load_settings(config_dir=services.settings.config_dir, data_dir=services.settings.data_dir)
    except ConfigError as exc:
        await audit(services, request, principal, "config.reload", "config", result=f"error: {exc}")
        raise BadRequest(str(exc)) from None
    changes = await services.supervisor.apply_models(fresh.models)
    services.rebuild_gates()
    await audit(services, request, principal, "config.reload", "config", after=changes)
    return {"status": "reloaded", **changes}
