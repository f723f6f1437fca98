"""The app factory. Everything the app owns is built in the lifespan and kept in one Services
object on app.state; nothing is created at import time."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from llamacontroller.api import errors, management, ollama, openai, root, system
from llamacontroller.api.frontdoor import FrontDoor
from llamacontroller.auth.ratelimit import TokenLimits
from llamacontroller.auth.sessions import LoginGuard, Sessions, secret_key
from llamacontroller.auth.store import AuthStore
from llamacontroller.config import Settings
from llamacontroller.db import session as dbsession
from llamacontroller.db.records import AuditLog, UsageWriter
from llamacontroller.metrics import Metrics
from llamacontroller.proxy.limits import ModelGate, QueueBudget
from llamacontroller.supervisor.manager import Supervisor
from llamacontroller.web import login, pages

log = logging.getLogger(__name__)

GLOBAL_QUEUE_LIMIT = 1024
STATIC = Path(__file__).resolve().parents[1] / "static"


@dataclass
class Services:
    settings: Settings
    supervisor: Supervisor
    db: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    auth: AuthStore
    audit: AuditLog
    usage: UsageWriter
    metrics: Metrics
    gates: dict[str, ModelGate]
    queue_budget: QueueBudget
    sessions_store: Sessions
    login_guard: LoginGuard
    limits: TokenLimits

    def gate(self, model_id: str) -> ModelGate:
        return self.gates[model_id]

    def rebuild_gates(self) -> None:
        for engine in self.supervisor.engines.values():
            entry = engine.entry
            gate = self.gates.get(entry.id)
            if gate is None or gate.limit != entry.max_concurrency or gate.queue_timeout != entry.queue_timeout:
                self.gates[entry.id] = ModelGate(
                    entry.id, entry.max_concurrency, entry.queue_timeout, self.queue_budget
                )


async def bootstrap_admin(auth: AuthStore, settings: Settings) -> str | None:
    """First start with an empty database: create `admin`. Returns a generated password, if any."""
    if await auth.count_users() > 0:
        return None
    given = settings.admin_password.get_secret_value() if settings.admin_password else None
    password = given or secrets.token_urlsafe(12)
    await auth.create_user("admin", password, "admin")
    return None if given else password


async def open_services(settings: Settings) -> Services:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(dbsession.migrate, settings.sqlalchemy_url)
    db = dbsession.create_engine(settings.sqlalchemy_url)
    sessions = dbsession.sessionmaker(db)
    auth = AuthStore(sessions, settings.auth.token_cache_ttl)
    supervisor = Supervisor(settings)
    metrics = Metrics(supervisor)
    services = Services(
        settings=settings,
        supervisor=supervisor,
        db=db,
        sessions=sessions,
        auth=auth,
        audit=AuditLog(sessions),
        usage=UsageWriter(sessions, touched=auth.take_touched),
        metrics=metrics,
        gates={},
        queue_budget=QueueBudget(GLOBAL_QUEUE_LIMIT),
        sessions_store=Sessions(sessions, settings.auth, secret_key(settings.data_dir)),
        login_guard=LoginGuard(settings.auth.lockout_threshold, settings.auth.lockout_seconds),
        limits=TokenLimits(),
    )
    services.rebuild_gates()
    metrics.watch_usage(services.usage)
    return services


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await open_services(settings)
        generated = await bootstrap_admin(services.auth, settings)
        if generated:
            # Printed once, to the console only: never to a log file or the database.
            print(f"\n  Created user 'admin' with password: {generated}\n  Change it after logging in.\n", flush=True)
        await services.supervisor.start()
        services.usage.start()
        app.state.services = services
        log.info("LlamaController ready with %d model(s)", len(services.supervisor.engines))
        try:
            yield
        finally:
            await services.supervisor.close()
            await services.usage.close()
            await services.db.dispose()

    app = FastAPI(
        title="LlamaController",
        version=_version(),
        lifespan=lifespan,
        root_path=settings.root_path,
        docs_url="/api/v1/docs",
        swagger_ui_oauth2_redirect_url="/api/v1/docs/oauth2-redirect",
        redoc_url=None,
        openapi_url="/api/v1/openapi.json",
    )
    errors.install(app)
    app.include_router(system.router)
    app.include_router(openai.router)
    app.include_router(management.router)
    app.include_router(ollama.router)
    app.include_router(root.router)
    app.include_router(login.router)
    app.include_router(pages.router)
    pages.install(app)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    app.add_middleware(FrontDoor, settings=settings, services=lambda: getattr(app.state, "services", None))
    return app


async def check_database(services: Services) -> None:
    async with services.db.connect() as connection:
        await connection.execute(text("SELECT 1"))


def _version() -> str:
    from llamacontroller import __version__

    return __version__
