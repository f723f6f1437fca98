"""What the app owns, built once in the lifespan (`open_services`); and the database-only part of
it (`open_store`) for CLI commands that must not start a supervisor to create a user."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from llamacontroller.auth.ratelimit import TokenLimits
from llamacontroller.auth.sessions import LoginGuard, Sessions, secret_key
from llamacontroller.auth.shared import Shared, SharedLimits, SharedLoginGuard
from llamacontroller.auth.store import AuthStore
from llamacontroller.catalog.jobs import Catalog
from llamacontroller.config import ModelsConfig, Settings
from llamacontroller.db import session as dbsession
from llamacontroller.db.records import AuditLog, UsageWriter
from llamacontroller.metrics import Metrics
from llamacontroller.proxy.limits import ModelGate, QueueBudget
from llamacontroller.proxy.upstream import UpstreamPool
from llamacontroller.supervisor.manager import Supervisor

GLOBAL_QUEUE_LIMIT = 1024


@dataclass
class Store:
    """The database and what lives in it: users, tokens, the audit log."""

    settings: Settings
    db: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    auth: AuthStore
    audit: AuditLog
    shared: Shared | None = None  # Redis, when several instances share state (redis_url)

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.close()
        await self.db.dispose()


@dataclass(kw_only=True)
class Services(Store):
    """Everything a running controller owns."""

    supervisor: Supervisor
    usage: UsageWriter
    metrics: Metrics
    gates: dict[str, ModelGate]
    queue_budget: QueueBudget
    sessions_store: Sessions
    login_guard: LoginGuard
    limits: TokenLimits
    catalog: Catalog = field(init=False)
    yaml_models: ModelsConfig = field(init=False)  # the models as models-config.yaml lists them
    scanned: set[str] = field(default_factory=set)  # ids of the models a scan of models_dir found
    models_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one config reload at a time
    models_version: int = 0  # grows when models appear or go (the dashboard redraws its list)

    def gate(self, model_id: str) -> ModelGate:
        return self.gates[model_id]

    def rebuild_gates(self, fresh: Iterable[str] = ()) -> None:
        """A gate per model, new where its limits changed or its engine restarts (`fresh`): the
        requests the old engine still serves keep their slots in the old gate, and do not hold
        back those waiting for the new one."""
        fresh = set(fresh)
        for gone in self.gates.keys() - self.supervisor.engines.keys():
            del self.gates[gone]
        for engine in self.supervisor.engines.values():
            entry = engine.entry
            gate = self.gates.get(entry.id)
            if (
                gate is None
                or entry.id in fresh
                or gate.limit != entry.max_concurrency
                or gate.queue_timeout != entry.queue_timeout
            ):
                self.gates[entry.id] = ModelGate(
                    entry.id, entry.max_concurrency, entry.queue_timeout, self.queue_budget
                )


async def open_store(settings: Settings) -> Store:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(dbsession.migrate, settings.sqlalchemy_url)
    db = dbsession.create_engine(settings.sqlalchemy_url)
    sessions = dbsession.sessionmaker(db)
    auth = AuthStore(sessions, settings.auth.token_cache_ttl)
    shared = Shared(settings.redis_url) if settings.redis_url else None
    if shared is not None:
        auth.broadcast = shared.publish_revocation  # the CLI's revocations reach the servers too
    return Store(settings=settings, db=db, sessions=sessions, auth=auth, audit=AuditLog(sessions), shared=shared)


async def open_services(settings: Settings) -> Services:
    store = await open_store(settings)
    # The engines reach the proxy's connection pool through this factory, not by import.
    supervisor = Supervisor(settings, connect=UpstreamPool)
    metrics = Metrics(supervisor)
    shared = store.shared
    auth = settings.auth
    services = Services(
        settings=settings,
        db=store.db,
        sessions=store.sessions,
        auth=store.auth,
        audit=store.audit,
        shared=shared,
        supervisor=supervisor,
        usage=UsageWriter(store.sessions, touched=store.auth.take_touched),
        metrics=metrics,
        gates={},
        queue_budget=QueueBudget(GLOBAL_QUEUE_LIMIT),
        sessions_store=Sessions(store.sessions, settings.auth, secret_key(settings.data_dir)),
        login_guard=SharedLoginGuard(shared, auth.lockout_threshold, auth.lockout_seconds)
        if shared
        else LoginGuard(auth.lockout_threshold, auth.lockout_seconds),
        limits=SharedLimits(shared) if shared else TokenLimits(),
    )
    services.yaml_models = settings.models
    services.catalog = Catalog(
        settings,
        store.sessions,
        store.audit,
        taken=supervisor.has,
    )
    services.rebuild_gates()
    metrics.watch_usage(services.usage)
    metrics.watch_gates(services.gates)
    return services


async def bootstrap_admin(store: Store) -> str | None:
    """First start with an empty database: create `admin`. Returns a generated password, if any."""
    if await store.auth.count_users() > 0:
        return None
    given = store.settings.admin_password.get_secret_value() if store.settings.admin_password else None
    password = given or secrets.token_urlsafe(12)
    await store.auth.create_user("admin", password, "admin")
    return None if given else password


async def check_database(store: Store) -> None:
    async with store.db.connect() as connection:
        await connection.execute(text("SELECT 1"))
