"""The supervisor: every configured model's Engine, admission, idle unloads and events.

It decides *which* engines run (admission and eviction through the pure `plan_eviction`); each
Engine alone decides *how* its own process starts and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from llamacontroller.config import ModelEntry, ModelsConfig, Settings, model_key
from llamacontroller.errors import (
    DrainTimeout,
    InsufficientMemory,
    LlamaControllerError,
    ModelNotFound,
    ModelUnavailable,
)
from llamacontroller.supervisor import memory
from llamacontroller.supervisor.engine import Connect, Engine
from llamacontroller.supervisor.eviction import Candidate, plan_eviction
from llamacontroller.supervisor.spawn import PidFiles
from llamacontroller.supervisor.states import LOADED, State

log = logging.getLogger(__name__)

TTL_TICK = 0.25


class Supervisor:
    def __init__(self, settings: Settings, *, connect: Connect) -> None:
        self.settings = settings
        self._connect = connect
        self.pidfiles = PidFiles(settings.data_dir / "run")
        self.engines: dict[str, Engine] = {}
        self._names: dict[str, Engine] = {}
        self._admission = asyncio.Lock()
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._ttl_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        for entry in settings.models.models:
            self._add(entry)

    def _add(self, entry: ModelEntry) -> None:
        engine = Engine(
            entry,
            self.settings,
            http=self.http,
            connect=self._connect,
            pidfiles=self.pidfiles,
            admit=self._admit,
            changed=self._publish,
        )
        self.engines[entry.id] = engine
        for name in entry.names:
            self._names[model_key(name)] = engine

    # ------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        killed = self.pidfiles.reap()
        if killed:
            log.warning("reaped %d engine(s) left by a previous run: %s", len(killed), killed)
        self._ttl_task = asyncio.create_task(self._unload_idle(), name="ttl")

    async def close(self) -> None:
        if self._ttl_task:
            self._ttl_task.cancel()
            await asyncio.gather(self._ttl_task, return_exceptions=True)
        await asyncio.gather(*(e.close() for e in self.engines.values()), return_exceptions=True)
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def http(self) -> aiohttp.ClientSession:
        """The pooled client used for health checks and for proxying to every engine."""
        if self._session is None or self._session.closed:
            # keepalive_timeout below llama-server's own 5 s: reusing a connection the engine is
            # closing at that very moment truncated a stream after its first event (seen in CI).
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=None, keepalive_timeout=4)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None), auto_decompress=False
            )
        return self._session

    # --------------------------------------------------------------------------- queries

    def resolve(self, name: str | None) -> Engine:
        if not name:
            raise ModelNotFound("no model given", param="model")
        engine = self._names.get(model_key(name))
        if engine is None:
            shown = name if len(name) <= 64 else name[:64] + "…"  # a 10 MB name is not echoed whole
            raise ModelNotFound(f"model {shown!r} not found", param="model")
        return engine

    def has(self, name: str) -> bool:
        return model_key(name) in self._names

    def status(self) -> list[dict[str, Any]]:
        return [engine.status() for engine in self.engines.values()]

    def loaded(self) -> list[Engine]:
        return [e for e in self.engines.values() if e.state is State.READY]

    # ---------------------------------------------------------------------------- actions

    async def load(self, model_id: str) -> Engine:
        engine = self.resolve(model_id)
        await engine.start()
        return engine

    async def unload(self, model_id: str, *, force: bool = True) -> Engine:
        engine = self.resolve(model_id)
        await engine.stop(drain=self.settings.llamacpp.drain_timeout, force=force, reason="unload requested")
        return engine

    async def switch(self, from_id: str | None, to_id: str) -> Engine:
        """Stop `from` once its in-flight requests finish, then make `to` ready.

        Requests for `to` arriving meanwhile wait for it; nothing in flight on `from` fails.
        Without `from`, every other loaded model is switched away from.
        """
        target = self.resolve(to_id)
        sources = (
            [self.resolve(from_id)]
            if from_id
            else [e for e in self.engines.values() if e is not target and e.state in LOADED and e.has_process]
        )
        drain = self.settings.llamacpp.drain_timeout
        await asyncio.gather(
            *(s.stop(drain=drain, force=False, reason=f"switching to {target.id}") for s in sources if s is not target)
        )
        await target.start()
        return target

    async def apply_models(self, models: ModelsConfig) -> dict[str, list[str]]:
        """Config reload: add new models, stop and drop removed ones (after they drain); a
        changed model keeps its engine, which takes the new definition: live fields at once,
        and a restart (after it drains) only where what the engine runs changed. Also called
        after engine settings changed (llamacpp-config.yaml): each engine compares its command."""
        wanted = {entry.id: entry for entry in models.models}
        removed = [m for m in self.engines if m not in wanted]
        changed = [m for m, e in wanted.items() if m in self.engines and self.engines[m].entry != e]
        added = [m for m in wanted if m not in self.engines]
        restarted = [m for m in self.engines if m in wanted and self.engines[m].reconfigure(wanted[m])]
        self.settings.models = models
        for model_id in added:
            self._add(wanted[model_id])
        self._names.clear()
        for engine in self.engines.values():
            if engine.id in removed:
                continue
            for name in engine.entry.names:
                self._names[model_key(name)] = engine
        drain = self.settings.llamacpp.drain_timeout
        for model_id in removed:
            await self.engines.pop(model_id).close_after(drain)
        return {"added": added, "removed": removed, "changed": changed, "restarted": restarted}

    # ------------------------------------------------------------------------- admission

    async def _admit(self, engine: Engine) -> None:
        """Make room for `engine`: stop idle models LRU first; wait for busy ones to drain."""
        async with self._admission:
            running = [e for e in self.engines.values() if e is not engine and e.has_process and e.state in LOADED]
            # A model still starting is wanted by the requests waiting for it: it counts, but is not
            # a victim (stopping it would fail them, and they would start it again).
            starting = [e for e in running if e.state is State.STARTING]
            engine.placement = self._place(engine)
            need = engine.need.ram
            plan = plan_eviction(
                [
                    Candidate(e.id, e.rss() or e.estimate_bytes or 0, e.in_flight, e.last_used)
                    for e in running
                    if e.state is not State.STARTING
                ],
                need_bytes=need,
                free_bytes=self._free_bytes(running),
                max_loaded=self.settings.models.max_loaded_models - len(starting),
            )
            if not plan.fits:
                raise InsufficientMemory(f"not enough memory for {engine.id!r}: {plan.reason}", retry_after=30)
            drain = self.settings.llamacpp.drain_timeout
            for victim_id in plan.victims:
                victim = self.engines[victim_id]
                try:
                    await victim.stop(drain=drain, force=False, reason=f"evicted for {engine.id}", sleep=True)
                except DrainTimeout as exc:
                    raise ModelUnavailable(
                        f"cannot load {engine.id!r} now: {exc.message}; retry later", retry_after=10
                    ) from None

    def _place(self, engine: Engine) -> list[int] | None:
        """The GPUs `engine` goes on (memory.place), or InsufficientMemory; None without a GPU need.
        Engines are not evicted for GPU memory: what NVML reports free is what there is."""
        need, fraction = engine.need, engine.gpu_fraction
        if need.vram <= 0 and fraction is None:
            return None
        gpus = memory.gpu_inventory()
        chosen = memory.place(need, gpus, pinned=engine.entry.gpus or None, fraction=fraction)
        if chosen is None:
            free = ", ".join(f"GPU {g.index}: {g.free / 2**30:.1f} GiB free" for g in gpus) or "no GPU"
            raise InsufficientMemory(
                f"not enough GPU memory for {engine.id!r}: needs {need.vram / 2**30:.1f} GiB ({free})", retry_after=30
            )
        return chosen

    def _free_bytes(self, running: list[Engine]) -> int:
        budget = self.settings.models.memory_budget
        if budget == "auto":
            # Engines still loading have not touched all their pages yet; count what they will.
            pending = sum(max(0, (e.estimate_bytes or 0) - (e.rss() or 0)) for e in running)
            return memory.available_bytes() - pending
        return budget - sum(e.estimate_bytes or 0 for e in running)

    # ----------------------------------------------------------------------- idle unload

    async def _unload_idle(self) -> None:
        while True:
            await asyncio.sleep(TTL_TICK)
            now = time.monotonic()
            for engine in self.engines.values():
                if (
                    engine.state is State.READY
                    and engine.has_process
                    and engine.ttl > 0
                    and engine.in_flight == 0
                    and now - engine.last_used >= engine.ttl
                ):
                    self.in_background(engine.stop(drain=0, force=False, reason=f"idle for {engine.ttl:g}s"))

    def in_background(self, coro: Any) -> None:
        """Run `coro` as a task the supervisor owns (awaited on close); its LlamaControllerError
        is the outcome, not a crash: the state and the audit log record it."""

        async def run() -> None:
            with contextlib.suppress(LlamaControllerError):  # e.g. a request arrived: stays loaded
                await coro

        task = asyncio.create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---------------------------------------------------------------------------- events

    def _publish(self, engine: Engine, old: State, new: State, reason: str) -> None:
        event = {
            "type": "model_state",
            "model": engine.id,
            "from": old.value,
            "to": new.value,
            "reason": reason,
            "time": time.time(),
        }
        for queue in self._subscribers:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(event)

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
        self._subscribers.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._subscribers.discard(queue)
