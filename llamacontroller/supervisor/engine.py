"""One model's engine: the single owner of its process and its state.

Callers never act on a state they read earlier. They ask:
- `acquire()` for a lease on a ready engine (starting it, or joining a start already under way);
- `start()` to load without a request;
- `stop()` to unload (joining a stop already under way).
Starts and stops each run as one task the engine owns, so a caller that goes away (a client
disconnecting mid-load) never leaves the engine half-way through a transition. Every state change
goes through `_set`, which checks the table in states.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import aiohttp

from llamacontroller.config import ModelEntry, Settings
from llamacontroller.errors import DrainTimeout, LlamaControllerError, StartFailed, StartInterrupted
from llamacontroller.paths import file_safe
from llamacontroller.supervisor import backends, memory, remote
from llamacontroller.supervisor.logs import EngineLog
from llamacontroller.supervisor.remote import Connect, Connections, Target
from llamacontroller.supervisor.spawn import PidFiles, free_port, kill_group, rss_bytes, spawn, terminate
from llamacontroller.supervisor.states import TRANSITIONS, IllegalTransition, State

log = logging.getLogger(__name__)

# Model fields a config reload applies to a running engine without restarting it.
LIVE_FIELDS = {
    "name", "aliases", "ttl", "max_concurrency", "queue_timeout", "request_timeout", "start_timeout", "sleep_on_evict"
}

Admit = Callable[["Engine"], Awaitable[None]]
Changed = Callable[["Engine", State, State, str], None]


__all__ = ["Connect", "Connections", "Engine", "Lease"]


class Lease:
    """Permission for one request to use a ready engine (and, for a remote model, one of its
    URLs). Release exactly once."""

    __slots__ = ("_engine", "_released", "_target")

    def __init__(self, engine: Engine, target: Target | None = None) -> None:
        self._engine = engine
        self._released = False
        self._target = target
        if target is not None:
            target.in_flight += 1

    @property
    def base_url(self) -> str:
        return self._target.url if self._target else self._engine.base_url

    @property
    def upstream(self) -> Connections:
        pool = self._target.upstream if self._target else self._engine.upstream
        assert pool is not None, "a ready engine has an address"
        return pool

    def fail_over(self, error: str) -> bool:
        """This lease's URL refused the connection: mark it down and move to the next healthy
        one. False when there is none (or the model has only one address)."""
        old = self._target
        if old is None:
            return False
        old.healthy, old.error = False, error
        log.warning("model %s: upstream %s failed (%s); failing over", self._engine.id, old.url, error)
        new = remote.pick(self._engine.targets)
        if new is None:
            return False
        old.in_flight -= 1
        new.in_flight += 1
        self._target = new
        return True

    def release(self) -> None:
        if not self._released:
            self._released = True
            if self._target is not None:
                self._target.in_flight -= 1
            self._engine._release()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Engine:
    def __init__(
        self,
        entry: ModelEntry,
        settings: Settings,
        *,
        http: Callable[[], aiohttp.ClientSession],
        connect: Connect,
        pidfiles: PidFiles,
        admit: Admit,
        changed: Changed,
    ) -> None:
        self.settings = settings
        self._take(entry)
        self._http = http
        self._connect = connect
        self._pidfiles = pidfiles
        self._admit = admit
        self._changed_hook = changed
        self.log = EngineLog(entry.id, settings.data_dir / "logs" / f"{file_safe(entry.id)}.log")

        self.state = State.STOPPED
        self.reason = ""
        self.last_error: str | None = None
        self.last_exit_code: int | None = None
        self.pid: int | None = None
        self.port: int | None = None
        self.base_url = ""
        self.upstream: Connections | None = None  # the proxy's connections to base_url
        self.targets: list[Target] = []  # a remote model's URLs, made on start
        self.started_at: float | None = None  # wall clock, for uptime
        self.load_seconds: float | None = None
        self.restarts = 0  # after a crash, by the supervisor
        self.hung: str | None = None  # set by the watchdog when it kills a hung engine
        self._failed_starts = 0  # in a row; requests wait out a growing backoff after each
        self._retry_at = 0.0
        self.in_flight = 0
        self.last_used = time.monotonic()
        # Set per request by Ollama's keep_alive; it governs this load only (cleared on stop).
        self.ttl_override: float | None = None
        self.placement: list[int] | None = None  # the GPUs admission chose (None: none needed)

        self._proc: asyncio.subprocess.Process | None = None
        self._start_task: asyncio.Task[None] | None = None
        self._stop_task: asyncio.Task[None] | None = None
        self._helpers: set[asyncio.Task[Any]] = set()  # output pump, exit watcher, restart timer
        self._changed = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._crashes: deque[float] = deque()
        self._launch_key: str | None = None
        self._launched: str | None = None  # command_key() of what was last started
        self._asleep = False  # the process lives, put to sleep (State.SLEEPING until woken)

    def _take(self, entry: ModelEntry) -> None:
        """A definition and what follows from it (asked on every request: worked out once here)."""
        self.entry = entry
        self.backend, self.backend_reason = backends.resolve(entry, self.settings)
        self.capabilities = self.backend.capabilities(entry)
        self.served_name = self.backend.served_name(entry)  # the client's `model` is rewritten to it
        self.estimate_bytes = self._estimate()
        self.need, self.gpu_fraction = self._need()

    # ----------------------------------------------------------------------------- public API

    @property
    def id(self) -> str:
        return self.entry.id

    @property
    def has_process(self) -> bool:
        return self.backend.has_process

    def serves(self, upstream_path: str) -> bool:
        return backends.PATHS.get(upstream_path, backends.CHAT) in self.capabilities

    @property
    def can_sleep(self) -> bool:
        return self.entry.sleep_on_evict and backends.SLEEP in self.capabilities

    @property
    def ttl(self) -> float:
        return self.ttl_override if self.ttl_override is not None else self.entry.ttl

    def rss(self) -> int | None:
        return rss_bytes(self.pid)

    async def acquire(self) -> Lease:
        """A lease on the ready engine, starting it if needed. Waits out a stop under way. A
        request whose start a switch or unload stopped starts it again (twice at most): it was
        waiting, not in flight, and nothing asked for it to fail."""
        interrupted = 0
        while True:
            if self.state is State.READY:
                # No await between the check and the count: nothing can stop us in between.
                target = remote.pick(self.targets) if self.targets else None
                if self.targets and target is None:
                    self._set(State.FAILED, self._targets_error())
                    continue
                self.in_flight += 1
                self._idle.clear()
                self.last_used = time.monotonic()
                return Lease(self, target)
            if self.state is State.STOPPING:
                await self._changed.wait()
                continue
            wait = self._retry_at - time.monotonic()
            if self.state is State.FAILED and wait > 0:
                # A failed start is not tried again by every request: they get its cause at once.
                raise StartFailed(
                    f"model {self.id!r} failed to start: {self.last_error} (next try in {wait:.0f}s)",
                    retry_after=wait,
                )
            try:
                await self.start()
            except StartInterrupted:
                interrupted += 1
                if interrupted > 2:
                    raise

    async def stopped_or_settled(self) -> None:
        """Return once no stop is under way (at once, almost always)."""
        while self.state is State.STOPPING:
            await self._changed.wait()

    async def start(self) -> None:
        """Load the model (or join the load under way); raises StartFailed if it cannot."""
        while self.state is State.STOPPING:
            await self._changed.wait()
        if self.state is State.READY:
            return
        if self.state in (State.STOPPED, State.FAILED, State.SLEEPING):
            self._set(State.STARTING, "waking" if self._asleep else "requested")
            self._start_task = asyncio.create_task(self._run_start(), name=f"start {self.id}")
        assert self._start_task is not None
        await asyncio.shield(self._start_task)
        outcome: State = self.state  # re-read: the start task changed it while we waited
        if outcome is State.FAILED:
            raise StartFailed(f"model {self.id!r} failed to start: {self.last_error}")
        if outcome is not State.READY:
            raise StartInterrupted(f"model {self.id!r} was unloaded while it was starting")

    async def stop(self, *, drain: float, force: bool, reason: str, sleep: bool = False) -> None:
        """Unload: refuse new leases, wait up to `drain` for in-flight ones, then end the process
        (or, with sleep, put the engine to sleep: it keeps its process and wakes on demand).

        With force=False a model still busy after `drain` stays loaded and DrainTimeout is
        raised: a model with requests in flight is never killed for another.
        """
        if self._stop_task is None or self._stop_task.done():
            self._stop_task = asyncio.create_task(
                self._run_stop(drain, force, reason, sleep and self.can_sleep), name=f"stop {self.id}"
            )
        await asyncio.shield(self._stop_task)

    def status(self) -> dict[str, Any]:
        now = time.time()
        return {
            "id": self.id,
            "name": self.entry.name or self.id,
            "backend": self.backend.name,
            "backend_reason": self.backend_reason,
            "state": self.state.value,
            "reason": self.reason,
            "pid": self.pid,
            "port": self.port,
            "upstreams": [
                {"url": t.url, "healthy": t.healthy, "in_flight": t.in_flight, "error": t.error} for t in self.targets
            ],
            "uptime": round(now - self.started_at, 1) if self.started_at and self.state is State.READY else None,
            "load_seconds": self.load_seconds,
            "in_flight": self.in_flight,
            "ttl": self.ttl,
            "idle_seconds": round(time.monotonic() - self.last_used, 1),
            "memory_estimate": self.estimate_bytes,
            "memory_rss": self.rss(),
            "memory_vram": self.need.vram or None,
            "placement": self.placement,
            "last_error": self.last_error,
            "last_exit_code": self.last_exit_code,
            "last_log": [line.text for line in self.log.tail(10)] if self.state is State.FAILED else [],
        }

    def command_key(self, entry: ModelEntry) -> str:
        """What decides the engine's command line and environment: the entry without its live
        fields, and the engine settings of llamacpp-config.yaml. A change here needs a restart."""
        engine_settings = self.settings.llamacpp.model_dump(include={"binary", "default_args", "engines"})
        return repr((entry.model_dump(exclude=LIVE_FIELDS), engine_settings, self.settings.llama_server_bin))

    def reconfigure(self, entry: ModelEntry) -> bool:
        """Take a new definition (config reload). Live fields (ttl, limits, aliases, name) apply at
        once. A change to what the engine runs restarts a loaded engine: from now on new requests
        wait (STOPPING), the old process finishes what it has in flight (up to drain_timeout) and
        ends, and the new one starts; those requests go to it. Returns True when it restarts."""
        if self._launched is None or self.command_key(entry) == self._launched:
            self._take(entry)  # live fields only, or never started: nothing runs the old command
            return False
        if self.state in (State.STARTING, State.STOPPING):
            self._spawn_helper(self._reconfigure_when_settled(entry), "reconfigure")  # look again once settled
            return True
        if self.state in (State.READY, State.SLEEPING):
            was_ready = self.state is State.READY  # read before the state changes below
            self._set(State.STOPPING, "config changed")
            self._spawn_helper(self._restart(entry, was_ready=was_ready), "reconfigure")
            return True
        self._take(entry)  # stopped or failed: the next start runs the new command
        return False

    async def _reconfigure_when_settled(self, entry: ModelEntry) -> None:
        while self.state in (State.STARTING, State.STOPPING):
            await self._changed.wait()
        self.reconfigure(entry)

    async def _restart(self, entry: ModelEntry, *, was_ready: bool) -> None:
        drain = self.settings.llamacpp.drain_timeout
        if self.in_flight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), drain)
        await self._end_process()
        self._take(entry)  # before STOPPED: a request waiting for the stop starts the new definition
        self._set(State.STOPPED, "config changed")
        if was_ready:
            with contextlib.suppress(LlamaControllerError):
                await self.start()

    async def close(self) -> None:
        """Controller shutdown: end everything this engine owns."""
        await self.close_after(0)

    async def close_after(self, drain: float) -> None:
        """Stop (letting in-flight requests finish for up to `drain` s) and end every helper."""
        for task in list(self._helpers):
            if task.get_name().startswith("restart"):
                task.cancel()
        with contextlib.suppress(LlamaControllerError):
            await self.stop(drain=drain, force=True, reason="controller shutdown" if drain == 0 else "removed")
        for task in list(self._helpers):
            task.cancel()
        await asyncio.gather(*self._helpers, return_exceptions=True)
        self.log.close()

    # ------------------------------------------------------------------------ transitions

    def _set(self, new: State, reason: str = "") -> None:
        old = self.state
        if new not in TRANSITIONS[old]:
            raise IllegalTransition(f"{self.id}: {old} -> {new}")
        self.state, self.reason = new, reason
        if new is State.STOPPED:
            self.ttl_override = None  # a keep_alive lasts for the load it came with
        log.info("model %s: %s -> %s%s", self.id, old, new, f" ({reason})" if reason else "")
        event, self._changed = self._changed, asyncio.Event()
        event.set()
        self._changed_hook(self, old, new, reason)

    def _release(self) -> None:
        self.in_flight -= 1
        self.last_used = time.monotonic()
        if self.in_flight == 0:
            self._idle.set()

    def _spawn_helper(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        # A context of its own: a helper outlives the request that started it (and its request id).
        task = asyncio.get_running_loop().create_task(coro, name=f"{name} {self.id}", context=contextvars.Context())
        self._helpers.add(task)
        task.add_done_callback(self._helpers.discard)

    # ----------------------------------------------------------------------------- start

    async def _run_start(self) -> None:
        """Never raises: the outcome is the state (READY or FAILED) and last_error."""
        began = time.monotonic()
        self._launched = self.command_key(self.entry)
        try:
            if not self.has_process:
                await self._connect_remote()
                healthy = sum(t.healthy for t in self.targets)
                self.last_error = None
                self._set(State.READY, f"{healthy} of {len(self.targets)} upstream URL(s) healthy")
                return
            if not self._asleep:
                # A file that cannot load fails here, before anything is evicted for it.
                await asyncio.to_thread(self.backend.preflight, self.entry)
            await self._admit(self)
            if self._asleep:
                await self._engine_call("/wake_up")
                self._asleep = False
            else:
                await self._launch()
            self.last_used = time.monotonic()  # a load is a use: the idle clock (ttl) starts now
            self.load_seconds = round(time.monotonic() - began, 3)
            self.last_error = None
            self._failed_starts, self._retry_at = 0, 0.0
            self._set(State.READY, f"healthy after {self.load_seconds:.2f}s")
        except asyncio.CancelledError:
            return  # stop() cancelled the start; it owns the cleanup
        except Exception as exc:
            self.last_error = str(exc) if isinstance(exc, LlamaControllerError) else repr(exc)
            self._retry_at = time.monotonic() + min(2.0**self._failed_starts, 30.0)
            self._failed_starts += 1
            if self.has_process:
                await self._end_process()  # a remote model's URLs stay, and are probed on
            self._set(State.FAILED, self.last_error)

    async def _launch(self) -> None:
        port = free_port()
        launch = backends.build_launch(self.entry, self.settings, port, gpus=self.placement)
        self.log.append("$ " + " ".join(launch.argv))
        try:
            proc = await spawn(launch.argv, launch.env, cwd=launch.cwd)
        except OSError as exc:
            raise StartFailed(f"cannot run {launch.argv[0]}: {exc.strerror or exc}") from None
        self._proc, self.pid, self.port = proc, proc.pid, port
        self._launch_key = launch.api_key
        self._point_at(f"http://127.0.0.1:{port}", launch.api_key)
        self.started_at = time.time()
        self._pidfiles.record(self.id, proc.pid, launch.argv)
        self._spawn_helper(self._pump_output(proc), "output")
        self._spawn_helper(self._watch(proc), "watch")
        timeout = self.entry.start_timeout or self.settings.llamacpp.start_timeout
        await self._wait_healthy(proc, launch.health_path, timeout, launch.api_key)
        if self.settings.llamacpp.watchdog_interval:
            self._spawn_helper(self._watchdog(proc, launch.health_path, launch.api_key), "watchdog")

    async def _watchdog(self, proc: asyncio.subprocess.Process, path: str, key: str | None) -> None:
        """Probe a ready engine's health; after `watchdog_failures` probes in a row without an
        answer (a hung or SIGSTOPped engine), kill it: its in-flight requests fail at once (their
        connections drop) and the crash path restarts it."""
        config = self.settings.llamacpp
        headers = {"Authorization": f"Bearer {key}"} if key else None
        failures = 0
        while self._proc is proc:
            await asyncio.sleep(config.watchdog_interval if failures == 0 else 0.5)
            if self._proc is not proc:
                return
            if self.state is not State.READY:  # asleep or draining: not probed
                failures = 0
                continue
            try:
                async with self._http().get(
                    self.base_url + path, headers=headers, timeout=aiohttp.ClientTimeout(total=config.watchdog_timeout)
                ) as response:
                    healthy = response.status == 200
            except (aiohttp.ClientError, TimeoutError):
                healthy = False
            failures = 0 if healthy else failures + 1
            if failures >= config.watchdog_failures and self._proc is proc and self.state is State.READY:
                message = f"engine did not answer {failures} health probes in a row (watchdog): killed"
                log.warning("model %s: %s", self.id, message)
                self.log.append(f"[controller] {message}")
                self.hung = message
                kill_group(proc.pid)
                return

    async def _wait_healthy(
        self, proc: asyncio.subprocess.Process, path: str, timeout: float, launch_key: str | None = None
    ) -> None:
        """Poll health every 10 ms, backing off to 50 ms; fail at once if the process exits.

        The cap is low on purpose: a local GET costs nothing, and every ms between the engine
        becoming healthy and us noticing is added to a cold request (bench/coldstart.py)."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        url = self.base_url + path
        while True:
            if proc.returncode is not None:
                await asyncio.sleep(0.05)  # let the output pump catch the last lines
                tail = " | ".join(line.text for line in self.log.tail(5))
                raise StartFailed(f"engine exited with code {proc.returncode} while starting: {tail}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                headers = {"Authorization": f"Bearer {launch_key}"} if launch_key else None
                async with self._http().get(url, timeout=aiohttp.ClientTimeout(total=2), headers=headers) as response:
                    if response.status == 200:
                        return
            if time.monotonic() > deadline:
                raise StartFailed(f"engine not healthy after {timeout:.0f}s (start_timeout)")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.05)

    async def _pump_output(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            self.log.append(line.decode("utf-8", "replace").rstrip())

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if self._proc is not proc or self.state not in (State.READY, State.SLEEPING):
            return  # an exit we caused (stop) or one the start path reports itself
        # A crash: in-flight requests see their upstream connection drop and get a 502 at once.
        self._pidfiles.forget(self.id)
        self._proc, self.pid, self.port = None, None, None
        self.last_exit_code = code
        # FAILED at once: no request may find it READY without a process. (Its last output
        # lines reach the status's last_log as the output pump reads them.)
        self.last_error, self.hung = self.hung or f"engine exited unexpectedly with code {code}", None
        self._set(State.FAILED, self.last_error)
        self._schedule_restart()

    def _schedule_restart(self) -> None:
        now = time.monotonic()
        window = self.settings.llamacpp.restart_window
        while self._crashes and now - self._crashes[0] > window:
            self._crashes.popleft()
        if len(self._crashes) >= self.settings.llamacpp.restart_limit:
            self.log.append(f"[controller] not restarting: {len(self._crashes)} crashes within {window:.0f}s")
            return
        delay = min(0.5 * 2 ** len(self._crashes), 30.0)
        self._crashes.append(now)
        self._spawn_helper(self._restart_later(delay), "restart")

    async def _restart_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.state is State.FAILED:
            self.restarts += 1
            with contextlib.suppress(LlamaControllerError):
                await self.start()

    # ------------------------------------------------------------------------------ stop

    async def _run_stop(self, drain: float, force: bool, reason: str, sleep: bool = False) -> None:
        while self.state is State.STOPPING:  # a stop of another kind is finishing
            await self._changed.wait()
        if self.state is State.STOPPED:
            return
        if self.state is State.FAILED:
            self._set(State.STOPPED, reason)
            return
        if self.state is State.STARTING:
            self._set(State.STOPPING, reason)
            assert self._start_task is not None
            self._start_task.cancel()
            await asyncio.wait([self._start_task])
            await self._end_process()
            self._set(State.STOPPED, reason)
            return
        self._set(State.STOPPING, reason)
        if self.in_flight:
            try:
                await asyncio.wait_for(self._idle.wait(), drain)
            except TimeoutError:
                if not force:
                    busy = self.in_flight
                    self._set(State.READY, "stop refused: still busy")
                    raise DrainTimeout(
                        f"model {self.id!r} still has {busy} request(s) in flight after {drain:.0f}s",
                        retry_after=5,
                    ) from None
        if sleep:
            try:
                await self._engine_call("/sleep?level=1")
            except StartFailed as exc:
                self.log.append(f"[controller] sleep failed, stopping instead: {exc}")
            else:
                self._asleep = True
                self._set(State.SLEEPING, reason + " (asleep)")
                return
        await self._end_process()
        self._set(State.STOPPED, reason)

    async def scrape_metrics(self, timeout: float) -> str | None:
        """The engine's own Prometheus text (llama-server --metrics, vLLM), or None when it has
        none, is not running, or does not answer within `timeout`."""
        if self.state is not State.READY or not self.has_process or backends.METRICS not in self.capabilities:
            return None
        headers = {"Authorization": f"Bearer {self._launch_key}"} if self._launch_key else None
        try:
            async with self._http().get(
                self.base_url + "/metrics", headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                return await response.text() if response.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
            return None

    async def _engine_call(self, path: str) -> None:
        """POST to the engine's own control endpoint (vLLM's /sleep, /wake_up)."""
        headers = {"Authorization": f"Bearer {self._launch_key}"} if self._launch_key else None
        try:
            async with self._http().post(
                self.base_url + path, headers=headers, timeout=aiohttp.ClientTimeout(total=60)
            ) as response:
                if response.status != 200:
                    raise StartFailed(f"{path} answered {response.status}: {(await response.text())[:200]}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise StartFailed(f"{path} failed: {type(exc).__name__}: {exc}") from None

    async def _end_process(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            self.last_exit_code = await terminate(proc, self.settings.llamacpp.stop_timeout)
            self.log.append(f"[controller] engine exited with code {self.last_exit_code}")
        self._pidfiles.forget(self.id)
        self.pid = self.port = None
        self.started_at = None
        self._asleep = False
        if self.has_process:
            self._point_at("")
        else:
            self._close_targets(stop_probing=True)

    def _point_at(self, base_url: str, api_key: str | None = None) -> None:
        """Where requests go. Pooled connections belong to one address: a new one gets a new pool."""
        if self.upstream is not None:
            self.upstream.close()
        self.base_url = base_url
        headers = [(b"authorization", b"Bearer " + api_key.encode())] if api_key else None
        self.upstream = self._connect(base_url, headers) if base_url else None

    # ------------------------------------------------------------------------- remote

    async def _connect_remote(self) -> None:
        """Connections to each URL (with the key from api_key_env), a first probe of each, and
        the prober that keeps their health (and the model's state) current. Raises StartFailed
        when no URL answers."""
        key = remote.api_key(self.entry)
        self._close_targets()
        headers = remote.auth_headers(key)
        self.targets = [Target(url, self._connect(url, headers)) for url in self.entry.upstream_urls]
        if self._health_path == "":
            return  # never probed: failures show on requests only
        await self._probe_all(headers)
        if not any(t.get_name().startswith("probe") and not t.cancelling() for t in self._helpers):
            self._spawn_helper(self._keep_probing(headers), "probe")
        if not any(t.healthy for t in self.targets):
            raise StartFailed(self._targets_error())

    @property
    def _health_path(self) -> str:
        return self.backend.health_path if self.entry.health_path is None else self.entry.health_path

    def _targets_error(self) -> str:
        return "no upstream URL is healthy: " + "; ".join(f"{t.url}: {t.error}" for t in self.targets)

    async def _probe_all(self, headers: list[tuple[bytes, bytes]] | None) -> None:
        plain = {k.decode(): v.decode() for k, v in headers or []}
        await asyncio.gather(*(self._probe(t, plain) for t in self.targets))

    async def _probe(self, target: Target, headers: dict[str, str]) -> None:
        url = target.url + self._health_path
        try:
            async with self._http().get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=3)) as response:
                target.healthy = response.status == 200
                target.error = None if target.healthy else f"health check answered {response.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            target.healthy, target.error = False, f"{type(exc).__name__}: {exc}".rstrip(": ")

    async def _keep_probing(self, headers: list[tuple[bytes, bytes]] | None) -> None:
        """Every remote_health_interval: probe each URL; no healthy URL left -> failed; one
        back -> ready again (through a start, which probes once more)."""
        while self.targets:
            await asyncio.sleep(self.settings.llamacpp.engines.remote_health_interval)
            await self._probe_all(headers)
            healthy = any(t.healthy for t in self.targets)
            if self.state is State.READY and not healthy:
                self.last_error = self._targets_error()
                self._set(State.FAILED, self.last_error)
            elif self.state is State.FAILED and healthy:
                with contextlib.suppress(LlamaControllerError):
                    await self.start()

    def _close_targets(self, *, stop_probing: bool = False) -> None:
        for task in list(self._helpers):
            if stop_probing and task.get_name().startswith("probe"):
                task.cancel()
        for target in self.targets:
            target.upstream.close()
        self.targets = []

    def _need(self) -> tuple[memory.Need, float | None]:
        try:
            return self.backend.need(self.entry, self.settings, self.estimate_bytes)
        except (OSError, ValueError) as exc:
            log.warning("model %s: no GPU memory estimate: %s", self.id, exc)
            return memory.Need(self.estimate_bytes or 0), None

    def _estimate(self) -> int | None:
        if not self.has_process:
            return None
        try:
            return self.backend.estimate(self.entry, self.settings)
        except (OSError, ValueError) as exc:
            log.warning("model %s: no memory estimate: %s", self.id, exc)
            return None
