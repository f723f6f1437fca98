"""The usage writer cannot be poisoned: oversized values are fitted, a row the database refuses
is isolated and logged, the others are written, and close() returns."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import func, select

from llamacontroller.db import session as dbsession
from llamacontroller.db.models import UsageEntry
from llamacontroller.db.records import UsageWriter


def row(request_id: str, **extra: object) -> dict[str, object]:
    return {
        "request_id": request_id,
        "model": "m",
        "endpoint": "/v1/chat/completions",
        "dialect": "openai",
        "status": 200,
        "duration_ms": 1.0,
        **extra,
    }


async def test_a_bad_row_is_isolated_and_the_rest_are_written(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    await asyncio.to_thread(dbsession.migrate, url)
    engine = dbsession.create_engine(url)
    writer = UsageWriter(dbsession.sessionmaker(engine))
    writer.start()
    writer.add(row("x" * 100, username="u" * 500))  # fitted to the columns, not refused
    writer.add(row("refused", endpoint=None))  # NOT NULL: the database refuses this one alone
    writer.add(row("fine"))
    await asyncio.wait_for(writer.close(), 15)
    async with dbsession.sessionmaker(engine)() as db:
        ids = list(await db.scalars(select(UsageEntry.request_id)))
        assert await db.scalar(select(func.count()).select_from(UsageEntry)) == 2
    assert "x" * 64 in ids and "fine" in ids
    assert writer.failed == 1 and writer.depth == 0
    await engine.dispose()
