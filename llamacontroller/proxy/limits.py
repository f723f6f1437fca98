"""Per-model concurrency: `max_concurrency` in flight, a bounded wait, then 429; a global cap on
everything waiting, then 503."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from llamacontroller.errors import ModelUnavailable, Overloaded


class QueueBudget:
    """How many requests may wait for a slot across all models at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.waiting = 0


class ModelGate:
    def __init__(self, model_id: str, limit: int, queue_timeout: float, budget: QueueBudget) -> None:
        self.model_id = model_id
        self.limit = limit
        self.queue_timeout = queue_timeout
        self.budget = budget
        self._free = asyncio.Semaphore(limit)
        self.waiting = 0

    @property
    def active(self) -> int:
        return self.limit - self._free._value

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._free.locked():
            await self._wait()
        else:
            await self._free.acquire()  # free slot: returns without suspending
        try:
            yield
        finally:
            self._free.release()

    async def _wait(self) -> None:
        if self.budget.waiting >= self.budget.limit:
            raise ModelUnavailable("the server is overloaded: too many requests waiting", retry_after=2)
        self.waiting += 1
        self.budget.waiting += 1
        try:
            await asyncio.wait_for(self._free.acquire(), self.queue_timeout)
        except TimeoutError:
            raise Overloaded(
                f"model {self.model_id!r} is busy: {self.limit} request(s) in flight and no slot freed "
                f"within {self.queue_timeout:g}s",
                retry_after=max(1.0, self.queue_timeout / 2),
            ) from None
        finally:
            self.waiting -= 1
            self.budget.waiting -= 1
