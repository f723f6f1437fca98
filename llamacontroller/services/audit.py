"""Who did what: every operation in this package records its actor here."""

from __future__ import annotations

import json
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from llamacontroller.auth.principal import Principal
from llamacontroller.errors import LlamaControllerError
from llamacontroller.services.core import Store

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Actor:
    """The caller an audit record names: a principal (API or dashboard), nobody yet (a login),
    or the console (the CLI on the server, with full power), or the controller itself."""

    principal: Principal | None
    client_ip: str | None = None
    user_agent: str | None = None
    is_console: bool = False
    system: str | None = None  # the controller itself, and why (SIGHUP, the config watcher)

    @classmethod
    def console(cls) -> Actor:
        return cls(None, is_console=True)

    @classmethod
    def system_actor(cls, why: str) -> Actor:
        return cls(None, system=why)

    @property
    def name(self) -> str | None:
        if self.is_console:
            return "cli"
        if self.system:
            return f"system ({self.system})"
        return self.principal.username if self.principal else None


async def record(
    store: Store,
    actor: Actor,
    action: str,
    target: str | None,
    *,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    result: str = "ok",
) -> None:
    await store.audit.record(
        action,
        actor=actor.name,
        token_id=actor.principal.token_id if actor.principal else None,
        client_ip=actor.client_ip,
        user_agent=(actor.user_agent or "")[:256] or None,
        target=target,
        before=jsonable(before),
        after=jsonable(after),
        result=result[:256],
    )


async def audited(store: Store, actor: Actor, action: str, target: str, work: Awaitable[T]) -> T:
    """Run an action and audit it, whether it worked or not."""
    try:
        result = await work
    except LlamaControllerError as exc:
        await record(store, actor, action, target, result=f"error: {exc.message}")
        raise
    await record(store, actor, action, target)
    return result


def jsonable(data: dict[str, Any] | None) -> dict[str, Any] | None:
    """Datetimes and the like as strings: the audit columns hold JSON."""
    return None if data is None else json.loads(json.dumps(data, default=str))
