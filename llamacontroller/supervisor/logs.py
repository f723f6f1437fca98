"""Each engine's output: a bounded ring buffer, a rotating file, and live followers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import logging.handlers
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class LogLine:
    seq: int
    time: float
    text: str


class EngineLog:
    def __init__(self, model_id: str, path: Path, capacity: int = 2000) -> None:
        self.lines: deque[LogLine] = deque(maxlen=capacity)
        self._seq = 0
        self._followers: set[asyncio.Queue[LogLine]] = set()
        path.parent.mkdir(parents=True, exist_ok=True)
        # A logger of its own per model, detached from the root so engine chatter stays in its file.
        self._file = logging.getLogger(f"llamacontroller.engine.{path.stem}")
        self._file.propagate = False
        self._file.setLevel(logging.INFO)
        if not self._file.handlers:
            handler = logging.handlers.RotatingFileHandler(
                path, maxBytes=5 * 1024 * 1024, backupCount=3, encoding="utf-8"
            )
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            self._file.addHandler(handler)

    def append(self, text: str) -> None:
        self._seq += 1
        line = LogLine(self._seq, time.time(), text)
        self.lines.append(line)
        self._file.info(text)
        for queue in self._followers:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(line)  # a slow follower misses lines rather than stalling the engine

    @property
    def last_seq(self) -> int:
        return self._seq

    def tail(self, n: int = 100) -> list[LogLine]:
        return list(self.lines)[-n:] if n > 0 else []

    async def follow(self, since: int = 0) -> AsyncIterator[LogLine]:
        """Lines after `since` from the buffer, then new ones as they arrive, until cancelled."""
        queue: asyncio.Queue[LogLine] = asyncio.Queue(maxsize=1000)
        self._followers.add(queue)
        try:
            for line in list(self.lines):
                if line.seq > since:
                    since = line.seq
                    yield line
            while True:
                line = await queue.get()
                if line.seq > since:
                    since = line.seq
                    yield line
        finally:
            self._followers.discard(queue)

    def close(self) -> None:
        for handler in list(self._file.handlers):
            handler.close()
            self._file.removeHandler(handler)
