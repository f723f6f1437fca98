"""Audit and usage records.

Audit rows are rare (admin actions) and written at once. Usage rows come with every inference
request, so they are queued and written in batches by one task, off the request path.

Nothing a caller sends can stop the writer: every value is fitted to its column before the
insert (a 100-character X-Request-ID into VARCHAR(64) used to fail the batch on PostgreSQL,
which was retried forever: usage stopped for everyone and shutdown hung). When a batch fails
while the database answers, its rows are written one by one and a row that still fails is
logged whole and counted (`llamacontroller_usage_rows_failed`), never retried. While the
database is down, rows wait and are retried; the queue is bounded (rows beyond it are logged and
counted, never dropped silently) and its depth is a metric. Shutdown waits for the database at
most `CLOSE_TIMEOUT`, then logs what it could not write.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import String, Table, insert, text, update
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
_LENGTHS = {
    c.name: c.type.length for c in _USAGE_TABLE.columns if isinstance(c.type, String) and c.type.length is not None
}
QUEUE_LIMIT = 100_000
CLOSE_TIMEOUT = 10.0


def fit(row: dict[str, Any]) -> dict[str, Any]:
    """The row with every string cut to its column's length."""
    for name, length in _LENGTHS.items():
        value = row.get(name)
        if isinstance(value, str) and len(value) > length:
            row[name] = value[:length]
    return row


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
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_LIMIT)
        self._task: asyncio.Task[None] | None = None
        self._take_touched = touched  # callable returning {token_id: last_used}
        self._deadline: float | None = None  # set by close(): give up waiting for the database then
        self.written = 0
        self.failed = 0  # rows the database refused on their own (logged)
        self.overflowed = 0  # rows beyond QUEUE_LIMIT while the database was away (logged)

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage writer")

    def add(self, row: dict[str, Any]) -> None:
        """Queue one usage row (the caller hands it over: it is not copied)."""
        row.setdefault("time", datetime.now(UTC))
        try:
            self._queue.put_nowait(fit(row))
        except asyncio.QueueFull:
            self.overflowed += 1
            if self.overflowed == 1 or self.overflowed % 1000 == 0:
                log.error("usage queue full: %d row(s) not recorded so far, e.g. %s", self.overflowed, row)

    async def close(self) -> None:
        """Write everything queued, then stop. The writer is asked, not cancelled: a cancel
        could land mid-batch and lose the rows it had taken from the queue."""
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + CLOSE_TIMEOUT
        if self._task is not None:
            while True:
                try:
                    self._queue.put_nowait(_STOP)
                    break
                except asyncio.QueueFull:
                    await asyncio.sleep(0.05)
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
                row = self._queue.get_nowait()
                if row is not _STOP:
                    batch.append(row)
            await self._write(batch)
        await self._write([])

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        touched: dict[int, datetime] = self._take_touched() if self._take_touched else {}
        delay = 0.5
        while True:
            try:
                await self._insert(batch, touched)
                self.written += len(batch)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                if await self._database_answers():
                    # The database is fine: some row is wrong. Find it, write the others.
                    await self._one_by_one(batch)
                    return
                if self._deadline is not None and asyncio.get_running_loop().time() > self._deadline:
                    log.error("shutting down with the database unreachable: %d usage row(s) not written", len(batch))
                    for row in batch:
                        log.error("usage row not written: %s", row)
                    self.failed += len(batch)
                    return
                # The database is down or locked: keep the rows and try again, never drop them.
                log.exception("writing %d usage rows failed; retrying in %.1fs", len(batch), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)

    async def _insert(self, batch: list[dict[str, Any]], touched: dict[int, datetime]) -> None:
        async with self.sessions() as db:
            if batch:
                # Core executemany on the table, not the ORM's bulk insert: a fraction of the
                # CPU per row, and rows come with every request.
                await db.execute(insert(_USAGE_TABLE), [{**_USAGE_DEFAULTS, **row} for row in batch])
            for token_id, when in touched.items():
                await db.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=when))
            await db.commit()

    async def _database_answers(self) -> bool:
        try:
            async with self.sessions() as db:
                await db.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    async def _one_by_one(self, batch: list[dict[str, Any]]) -> None:
        for row in batch:
            try:
                await self._insert([row], {})
                self.written += 1
            except Exception as exc:
                self.failed += 1
                log.error("usage row refused by the database, not retried: %s (%s)", row, exc)
