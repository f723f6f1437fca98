"""Dashboard pages under /ui. Server-rendered; every form works without JavaScript (POST, then a
303 back), and htmx requests get the changed fragment instead. Jinja2 escapes everything. Every
action goes through the service layer (llamacontroller/services), as the management API's do."""

from __future__ import annotations

import html
from collections.abc import Awaitable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from starlette.responses import Response

from llamacontroller.auth.principal import SCOPES
from llamacontroller.auth.sessions import SessionInfo
from llamacontroller.errors import BadRequest, LlamaControllerError
from llamacontroller.services import accounts, catalog, history
from llamacontroller.services import models as model_service
from llamacontroller.services.audit import Actor
from llamacontroller.services.core import Services
from llamacontroller.supervisor.memory import read_gguf
from llamacontroller.web.charts import bar_chart
from llamacontroller.web.session import ServicesDep, SessionDep, actor_of, back, checked_form, render

router = APIRouter(prefix="/ui", include_in_schema=False)

RowId = Annotated[int, PathParam(ge=1, le=2**31 - 1)]
Filter = Annotated[str | None, Query(max_length=256)]
AUDIT_PAGE = 50


# --------------------------------------------------------------------------------- models


def _model_rows(services: Services, session: SessionInfo) -> list[dict[str, Any]]:
    return [
        {**m, "origin": model_service.origin(services, m["id"])}
        for m in services.supervisor.status()
        if session.principal.may_use(m["id"])
    ]


def _can_manage(session: SessionInfo) -> bool:
    return "models:manage" in session.principal.scopes


@router.get("/")
async def models_page(request: Request, services: ServicesDep, session: SessionDep) -> Response:
    rows = _model_rows(services, session)
    jobs = _jobs_context(services) if _can_manage(session) else {}
    return render(request, session, "models.html", models=rows, can_manage=_can_manage(session), **jobs)


@router.get("/models-table")
async def models_table(request: Request, services: ServicesDep, session: SessionDep) -> Response:
    rows = _model_rows(services, session)
    return render(request, session, "_models_table.html", models=rows, can_manage=_can_manage(session))


@router.get("/models/{model_id:path}/row")
async def model_row(model_id: str, request: Request, services: ServicesDep, session: SessionDep) -> Response:
    engine = model_service.visible_engine(services, session.principal, model_id)
    return render(
        request,
        session,
        "_model_row.html",
        m={**engine.status(), "origin": model_service.origin(services, engine.id)},
        can_manage=_can_manage(session),
        models=_model_rows(services, session),
    )


@router.post("/models/{model_id:path}/{action}")
async def model_action(
    model_id: str, action: str, request: Request, services: ServicesDep, session: SessionDep
) -> Response:
    form = await checked_form(request, session)
    session.principal.require("models:manage")
    actor = actor_of(request, session.principal)
    engine = model_service.engine_for(services, session.principal, model_id)
    if action == "delete":
        return await _delete(request, services, actor, engine.id)
    work: Awaitable[Any]
    if action == "load":
        work = model_service.load(services, actor, engine.id)
    elif action == "unload":
        work = model_service.unload(services, actor, engine.id)
    elif action == "switch":
        target = model_service.engine_for(services, session.principal, str(form.get("to_id") or ""))
        work = model_service.switch(services, actor, engine.id, target.id)
    else:
        raise BadRequest(f"unknown action {action[:32]!r}")

    # Loading can take a while: answer at once; the page follows the state over SSE.
    services.supervisor.in_background(work)
    if request.headers.get("hx-request"):
        return render(
            request,
            session,
            "_model_row.html",
            m=engine.status(),
            can_manage=True,
            models=_model_rows(services, session),
        )
    return back(request, "/")


async def _delete(request: Request, services: Services, actor: Actor, model_id: str) -> Response:
    """Delete a model and its files (the page asked for confirmation); an error shows above the table."""
    try:
        await catalog.delete(services, actor, model_id)
    except LlamaControllerError as exc:
        if not request.headers.get("hx-request"):
            raise
        headers = {"HX-Retarget": "#flash", "HX-Reswap": "innerHTML"}
        return Response(html.escape(exc.message), media_type="text/html", headers=headers)
    if request.headers.get("hx-request"):
        return Response("", media_type="text/html")
    return back(request, "/")


# ----------------------------------------------------------------------------- pulls, jobs


def _jobs_context(services: Services, error: str | None = None) -> dict[str, Any]:
    """What _jobs.html shows: the newest jobs, whether it should keep polling, the models version."""
    jobs = catalog.jobs(services)[:20]
    active = any(j["state"] in ("queued", "running") for j in jobs)
    return {"jobs": jobs, "active": active, "version": services.models_version, "error": error}


def _jobs(request: Request, services: Services, session: SessionInfo, error: str | None = None) -> Response:
    response = render(request, session, "_jobs.html", **_jobs_context(services, error))
    seen = request.query_params.get("v")
    if seen is not None and seen != str(services.models_version):
        response.headers["HX-Trigger"] = "models-changed"
    return response


@router.get("/jobs")
async def jobs_panel(request: Request, services: ServicesDep, session: SessionDep) -> Response:
    session.principal.require("models:manage")
    return _jobs(request, services, session)


@router.post("/pull")
async def pull(request: Request, services: ServicesDep, session: SessionDep) -> Response:
    form = await checked_form(request, session)
    session.principal.require("models:manage")
    try:
        await catalog.pull(services, actor_of(request, session.principal), str(form.get("source") or "").strip())
    except LlamaControllerError as exc:
        if not request.headers.get("hx-request"):
            raise
        return _jobs(request, services, session, error=exc.message)
    if request.headers.get("hx-request"):
        return _jobs(request, services, session)
    return back(request, "/")


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(
    job_id: Annotated[str, PathParam(pattern=r"^[0-9a-f]{16}$")],
    request: Request,
    services: ServicesDep,
    session: SessionDep,
) -> Response:
    await checked_form(request, session)
    session.principal.require("models:manage")
    await catalog.cancel(services, actor_of(request, session.principal), job_id)
    if request.headers.get("hx-request"):
        return _jobs(request, services, session)
    return back(request, "/")


@router.get("/models/{model_id:path}")
async def model_detail(model_id: str, request: Request, services: ServicesDep, session: SessionDep) -> Response:
    engine = model_service.visible_engine(services, session.principal, model_id)
    metadata: dict[str, Any] = {}
    if engine.entry.backend == "llamacpp" and engine.entry.path:
        try:
            metadata = {
                k: v for k, v in read_gguf(Path(engine.entry.path)).metadata.items() if k != "tokenizer.chat_template"
            }
        except (OSError, ValueError):
            metadata = {}
    usage: list[history.UsageRow] = []
    if session.principal.is_admin:
        usage = await history.usage_entries(services, history.UsageFilter(model=engine.id), limit=20)
    return render(
        request,
        session,
        "model_detail.html",
        m=engine.status(),
        entry=engine.entry.model_dump(),
        metadata=metadata,
        usage=usage,
        can_manage=_can_manage(session),
    )


# --------------------------------------------------------------------------------- tokens


async def _tokens_page(request: Request, services: Services, session: SessionInfo, created: str | None) -> Response:
    actor = actor_of(request, session.principal)
    rows = await accounts.list_tokens(services, actor, every_user=session.principal.is_admin)
    models = [e.id for e in services.supervisor.engines.values() if session.principal.may_use(e.id)]
    return render(request, session, "tokens.html", tokens=rows, scopes=SCOPES, models=models, created=created)


@router.get("/tokens")
async def tokens_page(request: Request, services: ServicesDep, session: SessionDep) -> Response:
    return await _tokens_page(request, services, session, created=None)


@router.post("/tokens")
async def create_token(request: Request, services: ServicesDep, session: SessionDep) -> Response:
    form = await checked_form(request, session)
    created = await accounts.create_token(
        services,
        actor_of(request, session.principal),
        str(form.get("name") or "").strip(),
        scopes=[str(s) for s in form.getlist("scope")] or None,
        models=[services.supervisor.resolve(str(m)).id for m in form.getlist("model")],
        expires_in=str(form.get("expires_in") or "").strip() or None,
    )
    return await _tokens_page(request, services, session, created=created.token)


@router.post("/tokens/{token_id}/revoke")
async def revoke_token(token_id: RowId, request: Request, services: ServicesDep, session: SessionDep) -> Response:
    await checked_form(request, session)
    await accounts.revoke_token(services, actor_of(request, session.principal), token_id)
    return back(request, "/tokens")


# ---------------------------------------------------------------------------------- users


@router.get("/users")
async def users_page(request: Request, services: ServicesDep, session: SessionDep) -> Response:
    session.principal.require("admin")
    return render(request, session, "users.html", users=await accounts.list_users(services))


@router.post("/users")
async def create_user(request: Request, services: ServicesDep, session: SessionDep) -> Response:
    form = await checked_form(request, session)
    session.principal.require("admin")
    await accounts.create_user(
        services,
        actor_of(request, session.principal),
        str(form.get("username") or ""),
        str(form.get("password") or ""),
        str(form.get("role") or "user"),
    )
    return back(request, "/users")


@router.post("/users/{user_id}")
async def update_user(user_id: RowId, request: Request, services: ServicesDep, session: SessionDep) -> Response:
    form = await checked_form(request, session)
    session.principal.require("admin")
    disabled = form.get("disabled")
    await accounts.update_user(
        services,
        actor_of(request, session.principal),
        user_id,
        role=str(form["role"]) if form.get("role") else None,
        disabled=None if disabled is None else disabled == "true",
        password=str(form["password"]) if form.get("password") else None,
    )
    return back(request, "/users")


# ------------------------------------------------------------------------------ audit, usage


@router.get("/audit")
async def audit_page(
    request: Request,
    services: ServicesDep,
    session: SessionDep,
    actor: Filter = None,
    action: Filter = None,
    target: Filter = None,
    since: Filter = None,
    until: Filter = None,
    page: Annotated[int, Query(ge=1, le=10**6)] = 1,
) -> Response:
    session.principal.require("admin")
    filters = {"actor": actor, "action": action, "target": target}
    entries = await history.audit_entries(
        services,
        actor=actor or None,
        action=action or None,
        target=target or None,
        since=_date(since, "since"),
        until=_date(until, "until"),
        limit=AUDIT_PAGE + 1,
        offset=(page - 1) * AUDIT_PAGE,
    )
    shown = {**{k: v or "" for k, v in filters.items()}, "since": since or "", "until": until or ""}
    return render(
        request,
        session,
        "audit.html",
        entries=entries[:AUDIT_PAGE],
        page=page,
        more=len(entries) > AUDIT_PAGE,
        filters=shown,
    )


def _date(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{name}: not a date (use YYYY-MM-DD)", param=name) from None


@router.get("/usage")
async def usage_page(request: Request, services: ServicesDep, session: SessionDep) -> Response:
    session.principal.require("admin")
    by_day = await history.usage_groups(services, "day")
    by_model = await history.usage_groups(services, "model")
    by_token = await history.usage_groups(services, "token")
    charts = {
        "requests per day": bar_chart([(g.key, g.requests) for g in by_day], "requests"),
        "tokens per day": bar_chart([(g.key, g.prompt_tokens + g.completion_tokens) for g in by_day], "tokens"),
        "requests per model": bar_chart([(g.key, g.requests) for g in by_model], "requests"),
        "tokens per token": bar_chart(
            [(f"token {g.key}", g.prompt_tokens + g.completion_tokens) for g in by_token], "tokens"
        ),
    }
    return render(request, session, "usage.html", charts=charts, by_model=by_model, by_token=by_token)


# -------------------------------------------------------------------------------- password


@router.get("/password")
async def password_page(request: Request, session: SessionDep) -> Response:
    return render(request, session, "password.html", done=False, error=None)


@router.post("/password")
async def change_password(request: Request, services: ServicesDep, session: SessionDep) -> Response:
    form = await checked_form(request, session)
    actor = actor_of(request, session.principal)
    try:
        changed = await accounts.change_own_password(
            services, actor, str(form.get("current") or ""), str(form.get("new") or ""), keep_session=session.id_hash
        )
    except LlamaControllerError as exc:
        return render(request, session, "password.html", done=False, error=exc.message)
    if not changed:
        return render(request, session, "password.html", done=False, error="The current password is wrong.")
    return render(request, session, "password.html", done=True, error=None)
