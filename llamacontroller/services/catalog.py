"""Getting models without leaving the product: pull from the Hub, convert to GGUF, delete.

Every action is audited when it starts; a job's end is audited by the catalog. Models it adds or
removes reach the supervisor through `models.apply_models`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from llamacontroller.catalog import hub
from llamacontroller.catalog.jobs import Job, remove_files
from llamacontroller.errors import Conflict, Forbidden
from llamacontroller.services.audit import Actor, audited
from llamacontroller.services.core import Services
from llamacontroller.services.models import apply_models, engine_for, origin
from llamacontroller.supervisor.states import State


def _no_restricted_tokens(actor: Actor, what: str) -> None:
    if actor.principal is not None and actor.principal.models:
        raise Forbidden(f"a token restricted to some models cannot {what}")


async def pull(services: Services, actor: Actor, source_text: str, revision: str = "main") -> Job:
    _no_restricted_tokens(actor, "pull new ones")
    source = hub.parse_source(source_text)
    return await audited(
        services, actor, "model.pull.start", source.name, services.catalog.pull(source, actor.name, revision)
    )


async def convert(services: Services, actor: Actor, model_name: str, outtype: str) -> Job:
    _no_restricted_tokens(actor, "make new ones")
    engine = engine_for(services, actor.principal, model_name)
    work = services.catalog.convert(engine.entry, outtype, actor.name)
    return await audited(services, actor, "model.convert.start", f"{engine.id} -> {outtype}", work)


async def cancel(services: Services, actor: Actor, job_id: str) -> Job:
    return await audited(services, actor, "model.job.cancel", job_id[:64], services.catalog.cancel(job_id))


def jobs(services: Services) -> list[dict[str, Any]]:
    return [job.view() for job in sorted(services.catalog.jobs.values(), key=lambda j: j.created_at, reverse=True)]


async def delete(services: Services, actor: Actor, name: str, *, force: bool = False) -> dict[str, Any]:
    """Delete a pulled, converted or scanned model and its files. A model from the YAML is
    refused (its entry would point at nothing); a loaded one too, unless `force` (then it is
    unloaded first, after its in-flight requests)."""
    engine = engine_for(services, actor.principal, name)
    where = origin(services, engine.id)

    async def work() -> dict[str, Any]:
        if where == "config":
            raise Conflict(
                f"{engine.id!r} is defined in models-config.yaml: remove it there (its files are left alone)"
            )
        if engine.state not in (State.STOPPED, State.FAILED):
            if not force:
                raise Conflict(f"{engine.id!r} is {engine.state.value}: unload it first, or delete with force")
            await services.supervisor.unload(engine.id, force=False)
        if where == "scanned":
            files = _scanned_files(engine.entry.path or "")
            removed = await asyncio.to_thread(remove_files, files, _models_dir(services))
            await apply_models(services)
        else:
            removed = await services.catalog.forget(engine.id)  # which applies the models itself
        return {"deleted": engine.id, "origin": where, "files": removed}

    return await audited(services, actor, "model.delete", engine.id, work())


def _models_dir(services: Services) -> Path:
    return Path(services.yaml_models.models_dir)


def _scanned_files(path: str) -> list[Path]:
    """A scanned model's files: the GGUF (every part of a split set) or the folder."""
    file = Path(path)
    part = hub.split_part(file.name)
    if part is None:
        return [file]
    prefix, _, count = part
    return [file.parent / f"{prefix}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]
