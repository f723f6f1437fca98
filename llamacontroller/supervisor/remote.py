"""The URLs of a `remote` model: each with its connections, its health and its requests in flight.

A request goes to the least busy healthy URL (the first listed on a tie); a URL that refuses a
connection is marked down and the request tries the next. A probe (engine.py) marks URLs up and
down between requests.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from llamacontroller.config import ModelEntry
from llamacontroller.errors import StartFailed


class Connections(Protocol):
    """The proxy's pooled connections to one engine address. The supervisor only makes and
    closes them (through the `Connect` factory it is given); the proxy uses them via the lease."""

    def close(self) -> None: ...


# (base_url, headers every request carries) -> the connections to that address
Connect = Callable[[str, list[tuple[bytes, bytes]] | None], Connections]


@dataclass(eq=False)
class Target:
    url: str
    upstream: Connections
    healthy: bool = True
    in_flight: int = 0
    error: str | None = field(default=None)


def api_key(entry: ModelEntry) -> str | None:
    """The upstream's key, from the environment variable the config names (never the config)."""
    if not entry.api_key_env:
        return None
    value = os.environ.get(entry.api_key_env)
    if not value:
        raise StartFailed(f"environment variable {entry.api_key_env} (api_key_env) is not set")
    return value


def auth_headers(key: str | None) -> list[tuple[bytes, bytes]] | None:
    return [(b"authorization", b"Bearer " + key.encode())] if key else None


def pick(targets: list[Target], *, excluding: Target | None = None) -> Target | None:
    """The least busy healthy target (config order breaks ties), or None."""
    healthy = [t for t in targets if t.healthy and t is not excluding]
    return min(healthy, key=lambda t: t.in_flight) if healthy else None
