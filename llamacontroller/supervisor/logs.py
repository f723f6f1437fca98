"""Each engine's output: a bounded ring buffer, a rotating file, and live followers."""

from __future__ import annotations

import asyncio
import contextlib
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
        self._file = RotatingFile(path)

    def append(self, text: str) -> None:
        self._seq += 1
        line = LogLine(self._seq, time.time(), text)
        self.lines.append(line)
        self._file.write(line.time, text)
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
        self._file.close()


class RotatingFile:
    """Timestamped lines appended to `path`, rotated to path.1 … path.N at `max_bytes`.

    Not logging's RotatingFileHandler: it seeks to the end of the file before every line to learn
    its size, and builds a LogRecord and a formatted time for each. llama-server writes ~9 lines
    per request; on the 2-core bench machine that was a visible share of the controller's CPU
    while streaming (CPU taken from the engine). Same line format as logging's default asctime."""

    def __init__(self, path: Path, max_bytes: int = 5 * 1024 * 1024, backups: int = 3) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._file = path.open("ab")
        self._size = self._file.tell()
        self._second = -1
        self._stamp = ""

    def write(self, when: float, text: str) -> None:
        second = int(when)
        if second != self._second:  # one strftime per second, not per line
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        data = f"{self._stamp},{int(when % 1 * 1000):03d} {text}\n".encode("utf-8", "replace")
        if self._size + len(data) > self.max_bytes and self._size:
            self._rotate()
        self._file.write(data)
        self._file.flush()  # `tail -f` and a crash both see every line
        self._size += len(data)

    def _rotate(self) -> None:
        self._file.close()
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
        if self.backups:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._file = self.path.open("ab")
        self._size = 0

    def close(self) -> None:
        self._file.close()
