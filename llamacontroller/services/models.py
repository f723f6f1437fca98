"""Models: what callers see of them, and the actions on them (load, unload, switch, reload).

A caller restricted to some models sees and touches only those; every action is audited.

The models the supervisor runs are the YAML's, then the catalog's (pulled and converted, kept in
the database), then what a scan of models_dir finds (`catalog.scan.merge`). Every change to one
of the three goes through `apply_models`, one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from watchfiles import awatch

from llamacontroller.auth.principal import Principal
from llamacontroller.catalog.scan import merge, scan, signature
from llamacontroller.config import CONFIG_FILES, ConfigError, ModelsConfig, Settings, load_settings
from llamacontroller.errors import BadRequest, Forbidden, ModelNotFound
from llamacontroller.services.audit import Actor, audited, record
from llamacontroller.services.core import Services
from llamacontroller.supervisor.engine import Engine
from llamacontroller.supervisor.memory import available_bytes, gpu_inventory

log = logging.getLogger(__name__)

# What a caller without models:manage sees of a model: no paths, flags, URLs or environment.
PUBLIC_FIELDS = {"id", "name", "backend", "aliases", "ctx_size", "embedding", "reranking"}


class ModelInfo(BaseModel):
    """A configured model. The fields after `state` are shown to `models:manage` only."""

    id: str
    name: str | None
    backend: str
    aliases: list[str]
    ctx_size: int
    embedding: bool
    reranking: bool
    state: str
    path: str | None = None
    url: str | None = None
    urls: list[str] = Field(default_factory=list)
    api_key_env: str | None = Field(None, description="The variable's name; its value is never shown")
    upstream_model: str | None = None
    health_path: str | None = None
    args: list[str] = Field(default_factory=list)
    ttl: float = 0
    max_concurrency: int = 0
    queue_timeout: float = 0
    request_timeout: float = 0
    gpus: list[int] = Field(default_factory=list)
    start_timeout: float | None = None
    sleep_on_evict: bool = False
    origin: str = Field("config", description="config, pulled, converted or scanned (docs/models.md)")


class UpstreamStatus(BaseModel):
    url: str
    healthy: bool
    in_flight: int
    error: str | None


class ModelStatus(BaseModel):
    id: str
    name: str
    backend: str = Field(description="The backend serving it (what `auto` chose)")
    backend_reason: str = Field(description="Why: 'configured', or what `auto` found")
    state: str
    reason: str
    pid: int | None
    port: int | None
    upstreams: list[UpstreamStatus] = Field(description="A remote model's URLs and their health")
    uptime: float | None = Field(description="Seconds since it became ready")
    load_seconds: float | None
    in_flight: int
    ttl: float
    idle_seconds: float
    memory_estimate: int | None
    memory_rss: int | None = Field(description="Resident memory of the engine's whole process tree")
    memory_vram: int | None = Field(description="Estimated GPU memory need, where it uses a GPU")
    placement: list[int] | None = Field(description="The GPUs admission placed it on")
    last_error: str | None
    last_exit_code: int | None
    last_log: list[str] = Field(description="The engine's last lines, when it failed")


def model_infos(services: Services, principal: Principal) -> list[ModelInfo]:
    manager = "models:manage" in principal.scopes
    fields = None if manager else PUBLIC_FIELDS
    return [
        ModelInfo(
            **e.entry.model_dump(include=fields, exclude={"env"}),
            state=e.state.value,
            **({"origin": origin(services, e.id)} if manager else {}),
        )
        for e in services.supervisor.engines.values()
        if principal.may_use(e.id)
    ]


def statuses(services: Services, principal: Principal) -> list[ModelStatus]:
    return [ModelStatus(**s) for s in services.supervisor.status() if principal.may_use(s["id"])]


def memory_overview(services: Services) -> dict[str, Any]:
    return {
        "max_loaded_models": services.settings.models.max_loaded_models,
        "memory": {"budget": services.settings.models.memory_budget, "available": available_bytes()},
        "gpus": [dataclasses.asdict(gpu) for gpu in gpu_inventory()],
    }


def engine_for(services: Services, principal: Principal | None, name: str) -> Engine:
    """The engine a caller names; a caller restricted to other models gets a 403. (None: the
    console, which may act on every model.)"""
    engine = services.supervisor.resolve(name)
    if principal is not None:
        principal.require_model(engine.id)
    return engine


def visible_engine(services: Services, principal: Principal, name: str) -> Engine:
    """The engine a caller names, as a 404 when they may not use it (reads do not confirm it exists)."""
    engine = services.supervisor.resolve(name)
    if not principal.may_use(engine.id):
        raise ModelNotFound(f"model {name[:64]!r} not found", param="model")
    return engine


async def load(services: Services, actor: Actor, name: str) -> Engine:
    engine = engine_for(services, actor.principal, name)
    await audited(services, actor, "model.load", engine.id, services.supervisor.load(engine.id))
    return engine


async def unload(services: Services, actor: Actor, name: str) -> Engine:
    engine = engine_for(services, actor.principal, name)
    await audited(services, actor, "model.unload", engine.id, services.supervisor.unload(engine.id))
    return engine


async def switch(services: Services, actor: Actor, from_name: str | None, to_name: str) -> Engine:
    """Stop `from_name` (every other model when None) once idle, then load `to_name`."""
    target = engine_for(services, actor.principal, to_name)
    source = engine_for(services, actor.principal, from_name) if from_name is not None else None
    if source is None and actor.principal is not None and actor.principal.models:
        # "Switch from whatever is loaded" could stop a model this token may not touch.
        raise Forbidden("a token restricted to some models must name from_id", param="from_id")
    action = services.supervisor.switch(source.id if source else None, target.id)
    return await audited(services, actor, "model.switch", f"{from_name or '*'} -> {to_name}", action)


async def reload_config(services: Services, actor: Actor) -> dict[str, list[str]]:
    """Re-read the three YAML files and apply them: the one path for the API, SIGHUP and the file
    watcher. All or nothing: an invalid file changes nothing (the error is logged and audited).

    Engine settings and models apply as `apply_models` says (a model restarts only when what its
    engine runs changed); auth settings apply to the next request, except `trusted_proxies`,
    which the HTTP server reads once at start."""
    settings = services.settings
    try:
        fresh = load_settings(config_dir=settings.config_dir, data_dir=settings.data_dir)
    except ConfigError as exc:
        log.error("config reload refused, nothing changed: %s", exc)
        await record(services, actor, "config.reload", "config", result=f"error: {exc}")
        raise BadRequest(str(exc)) from None
    async with services.reload_lock:
        before = settings.auth.model_dump(mode="json"), settings.llamacpp.model_dump(mode="json")
        apply_auth(services, fresh)
        settings.llamacpp = fresh.llamacpp
        changes = await apply_models(services, fresh.models)
        changes["settings"] = [
            name
            for name, old, new in (
                ("auth", before[0], fresh.auth.model_dump(mode="json")),
                ("llamacpp", before[1], fresh.llamacpp.model_dump(mode="json")),
            )
            if old != new
        ]
    if settings.auth.trusted_proxies != fresh.auth.trusted_proxies:
        log.warning("auth.trusted_proxies changed: it applies after a restart")
    log.info("config reloaded: %s", {k: v for k, v in changes.items() if v} or "no changes")
    await record(services, actor, "config.reload", "config", after=changes)
    return changes


def apply_auth(services: Services, fresh: Settings) -> None:
    """Auth settings for the next request; the parts kept outside `settings` follow."""
    services.settings.auth = fresh.auth
    services.sessions_store.config = fresh.auth
    services.auth.cache_ttl = fresh.auth.token_cache_ttl
    services.login_guard.threshold = fresh.auth.lockout_threshold
    services.login_guard.seconds = fresh.auth.lockout_seconds


async def watch_config(services: Services) -> None:
    """Reload when one of the three files changes (written, replaced, created or removed)."""
    folder = services.settings.config_dir
    if not folder.is_dir():
        log.info("no config dir %s: nothing to watch (SIGHUP and the API still reload)", folder)
        return
    names = set(CONFIG_FILES.values())
    actor = Actor.system_actor("config watcher")
    async for changes in awatch(folder, debounce=400, step=50, recursive=False,
                                watch_filter=lambda _, path: Path(path).name in names):
        log.info("config files changed: %s", sorted({Path(path).name for _, path in changes}))
        with contextlib.suppress(BadRequest):  # logged and audited by reload_config
            await reload_config(services, actor)


def reload_on_sighup(services: Services) -> Callable[[], None]:
    """Install SIGHUP as "reload the config"; returns the function that removes it."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[Any]] = set()

    async def reload() -> None:
        log.info("SIGHUP: reloading the config")
        with contextlib.suppress(BadRequest):
            await reload_config(services, Actor.system_actor("SIGHUP"))

    def handle() -> None:
        task = loop.create_task(reload(), name="sighup-reload")
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    loop.add_signal_handler(signal.SIGHUP, handle)

    def remove() -> None:
        loop.remove_signal_handler(signal.SIGHUP)

    return remove


# ------------------------------------------------------------------ the models the supervisor runs


async def apply_models(services: Services, yaml_models: ModelsConfig | None = None) -> dict[str, list[str]]:
    """Merge the YAML (`yaml_models`, or the last one read), the catalog and a fresh scan, and
    hand the result to the supervisor: new models appear, removed ones stop, changed ones restart."""
    async with services.models_lock:
        if yaml_models is not None:
            services.yaml_models = yaml_models
        found = await asyncio.to_thread(scan, Path(services.yaml_models.models_dir))
        merged = merge(services.yaml_models, services.catalog.entries(), found)
        kept = {id(entry) for entry in merged.models}  # a scanned model the YAML shadows is not one
        services.scanned = {entry.id for entry in found if id(entry) in kept}
        changes = await services.supervisor.apply_models(merged)
        services.rebuild_gates(fresh=changes["restarted"])
        if any(changes.values()):
            services.models_version += 1
        return changes


async def watch_models_dir(services: Services) -> None:
    """Rescan models_dir every `scan_interval` seconds and apply what changed."""
    last = await asyncio.to_thread(signature, Path(services.yaml_models.models_dir))
    while True:
        interval = services.yaml_models.scan_interval
        await asyncio.sleep(interval or 5.0)
        if not interval:
            continue
        try:
            now = await asyncio.to_thread(signature, Path(services.yaml_models.models_dir))
            if now != last:
                changes = await apply_models(services)
                last = now
                if any(changes.values()):
                    log.info("models_dir changed: %s", changes)
        except Exception:
            log.exception("rescanning models_dir failed; trying again in %gs", interval)


async def start_models(services: Services) -> asyncio.Task[None]:
    """At start: the catalog's models and unfinished jobs from the database, a scan of
    models_dir, then the task that keeps watching it (the caller cancels it at the end)."""
    services.catalog.changed = lambda: apply_models(services)
    with contextlib.suppress(OSError):  # there to drop models into, from the first start
        await asyncio.to_thread(Path(services.yaml_models.models_dir).mkdir, parents=True, exist_ok=True)
    await services.catalog.start()
    await apply_models(services)
    return asyncio.create_task(watch_models_dir(services), name="models-dir")


def origin(services: Services, model_id: str) -> str:
    """Where a model comes from: config, pulled, converted or scanned."""
    made = services.catalog.origin(model_id)
    if made:
        return made
    return "scanned" if model_id in services.scanned else "config"
