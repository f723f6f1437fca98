"""The SSE helper behind /api/v1/events, logs?follow and job progress: a quiet source gets
keep-alives and the stream goes on (it used to end at the first quiet 15 s)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from llamacontroller.api.management import models


async def test_a_quiet_source_gets_keep_alives_and_the_stream_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "SSE_KEEPALIVE", 0.05)

    async def quiet() -> AsyncIterator[dict[str, Any]]:
        await asyncio.sleep(0.3)  # six keep-alive periods of silence
        yield {"n": 1}
        await asyncio.sleep(0.2)
        yield {"n": 2}

    response = models.sse(quiet())
    chunks = [chunk async for chunk in response.body_iterator]
    assert chunks[0] == b": connected\n\n"
    assert chunks.count(b": keep-alive\n\n") >= 4
    assert [c for c in chunks if c.startswith(b"data: ")] == [b'data: {"n": 1}\n\n', b'data: {"n": 2}\n\n']
