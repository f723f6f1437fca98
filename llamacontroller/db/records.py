"""Audit and usage records.

Audit rows are rare (admin actions) and written at once. Usage rows come with every inference
request, so they are queued and written in batches by one task, off the request path; the queue
is unbounded and flushed on shutdown, so a row is never dropped.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, insert, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from llamacontroller.db.models import ApiToken, AuditEntry, UsageEntry

log = logging.getLogger(__name__)

BATCH = 500
# Seconds a row may wait for companions before it is written. Each write is a transaction
# (~1-3 ms of CPU); at 0.2 s, streams (a few requests a second) paid one per request, CPU taken
# from the engine sharing the cores (bench/proxy.py).
LINGER = 1.0
_STOP: dict[str, Any] = {}
# executemany needs every row to carry the same keys.
_USAGE_TABLE = cast(Table, UsageEntry.__table__)
_USAGE_DEFAULTS: dict[str, Any] = {c.name: None for c in _USAGE_TABLE.columns if c.name not in ("id", "time")}


class AuditLog:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def record(self, action: str, **fields: Any) -> None:
        async with self.sessions() as db:
            db.add(AuditEntry(action=action, **fields))
            await db.commit()


class UsageWriter:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], touched: Any = None) -> None:
        self.sessions = sessions
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._take_touched = touched  # callable returning {token_id: last_used}
        self.written = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage writer")

    def add(self, row: dict[str, Any]) -> None:
        """Queue one usage row (the caller hands it over: it is not copied)."""
        row.setdefault("time", datetime.now(UTC))
        self._queue.put_nowait(row)

    async def close(self) -> None:
        """Write everything queued, then stop. The writer is asked, not cancelled: a cancel
        could land mid-batch and lose the rows it had taken from the queue."""
        if self._task is not None:
            self._queue.put_nowait(_STOP)
            await self._task
            self._task = None
        await self._flush_all()

    async def flush(self) -> None:
        """For tests and shutdown: wait until every queued row is written."""
        await self._flush_all()

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is not _STOP:
                await asyncio.sleep(LINGER)
            batch = [first]
            while len(batch) < BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            stopping = any(row is _STOP for row in batch)
            await self._write([row for row in batch if row is not _STOP])

    async def _flush_all(self) -> None:
        while not self._queue.empty():
            batch: list[dict[str, Any]] = []
            while len(batch) < BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._write(batch)
        await self._write([])

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        touched: dict[int, datetime] = self._take_touched() if self._take_touched else {}
        delay = 0.5
        while True:
            try:
                async with self.sessions() as db:
                    if batch:
                        # Core executemany on the table, not the ORM's bulk insert: a fraction of the
                        # CPU per row, and rows come with every request.
                        await db.execute(insert(_USAGE_TABLE), [{**_USAGE_DEFAULTS, **row} for row in batch])
                    for token_id, when in touched.items():
                        await db.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=when))
                    await db.commit()
                self.written += len(batch)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                # The database is down or locked: keep the rows and try again, never drop them.
                log.exception("writing %d usage rows failed; retrying in %.1fs", len(batch), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)
