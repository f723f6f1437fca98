"""Auth cost on the request path: the real `get_principal` dependency, timed in process.

Builds the controller's services on a scratch SQLite database, creates a token, then times
10,000 calls for a cached token (the hot path every request takes) and 200 calls that miss the
cache (a database lookup, as after a restart or every token_cache_ttl seconds). Goal: p50 of the
cached path under 0.1 ms.

Usage: python bench/auth.py
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from starlette.requests import Request

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llamacontroller.api.deps import get_principal
from llamacontroller.config import load_settings
from llamacontroller.services.core import open_services


def request_for(app_state: object, token: str) -> Request:
    app = type("App", (), {"state": app_state})()
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "root_path": "",
        "app": app,
        "headers": [(b"authorization", f"Bearer {token}".encode())],
        "query_string": b"",
    }
    return Request(scope)


async def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-auth-"))
    (root / "config").mkdir()
    settings = load_settings(config_dir=root / "config", data_dir=root / "data")
    services = await open_services(settings)
    state = type("State", (), {"services": services})()
    user = await services.auth.create_user("bench", "bench-password", "user")
    token = (await services.auth.create_token(user, "bench")).token

    await get_principal(request_for(state, token))  # warm the cache
    cached = []
    for _ in range(10_000):
        request = request_for(state, token)
        began = time.perf_counter_ns()
        await get_principal(request)
        cached.append(time.perf_counter_ns() - began)
    uncached = []
    for _ in range(200):
        services.auth._cache.clear()
        request = request_for(state, token)
        began = time.perf_counter_ns()
        await get_principal(request)
        uncached.append(time.perf_counter_ns() - began)
    await services.db.dispose()

    def row(name: str, values: list[int]) -> str:
        ordered = sorted(values)
        p99 = ordered[int(len(ordered) * 0.99)]
        return f"| {name} | {len(values):,} | {statistics.median(values) / 1000:.1f} | {p99 / 1000:.1f} |"

    print("\nauth on the request path (get_principal), microseconds\n")
    print("| path | calls | p50 µs | p99 µs |\n|---|---:|---:|---:|")
    print(row("cached token (every request)", cached))
    print(row("cache miss (SQLite lookup)", uncached))
    print(f"\ngoal: cached p50 < 100 µs -> {'met' if statistics.median(cached) < 100_000 else 'MISSED'}")


if __name__ == "__main__":
    asyncio.run(main())
