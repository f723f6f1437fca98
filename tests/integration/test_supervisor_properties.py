"""The supervisor's invariants under random schedules (hypothesis, stateful): load, unload,
switch, requests (quick ones, and ones held open), crashes and config reloads, in any order, on
three models of which at most two may be loaded, against stand-in engines
(tests/standins/fake_engine.py, real processes that start in a fraction of a second).

After every step:
- at most one live process per model, and it is the one the supervisor names;
- a model with a request in flight was not ended, except by a crash, an explicit unload or a
  config change that restarts it (evictions and switches wait for it, or give up);
- every state change was an edge of the states table;
- at the end, closing the supervisor leaves no process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from llamacontroller.config import ModelsConfig, Settings
from llamacontroller.errors import LlamaControllerError
from llamacontroller.proxy.upstream import UpstreamPool
from llamacontroller.supervisor.manager import Supervisor
from llamacontroller.supervisor.states import TRANSITIONS, State
from tests.harness import ROOT, SMOLLM2, model_entry

pytestmark = pytest.mark.slow

MODELS = ("a", "b", "c")
TRANSITION = re.compile(r"model (\S+): (\w+) -> (\w+)")


class Transitions(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        found = TRANSITION.search(record.getMessage())
        if found:
            self.seen.append(found.groups())  # type: ignore[arg-type]


def fake_binary(folder: Path) -> str:
    script = folder / "fake-llama-server"
    script.write_text(f'#!/bin/sh\nexec {sys.executable} {ROOT / "tests" / "standins" / "fake_engine.py"} "$@"\n')
    script.chmod(0o755)
    return str(script)


def live_engines(data_dir: Path) -> dict[str, list[int]]:
    """Live stand-in engine processes of this data dir, by model (its --alias)."""
    found: dict[str, list[int]] = {}
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cmdline = proc.info["cmdline"] or []
            if "fake_engine.py" not in " ".join(cmdline):
                continue
            if proc.environ().get("LLAMACONTROLLER_ENGINE_OF") != str(data_dir.resolve()):
                continue
            found.setdefault(cmdline[cmdline.index("--alias") + 1], []).append(proc.pid)
        except (psutil.Error, ValueError, IndexError):
            continue
    return found


class SupervisorMachine(RuleBasedStateMachine):
    folder: Path

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.data_dir = Path(self.folder) / f"run-{id(self)}"
        self.binary = fake_binary(Path(self.folder))
        self.ctx = {m: 512 for m in MODELS}
        self.settings = Settings(
            data_dir=self.data_dir,
            config_dir=self.data_dir / "no-config",
            llama_server_bin=self.binary,
            llamacpp={"drain_timeout": 0.3, "stop_timeout": 2, "start_timeout": 20, "watchdog_interval": 0},
            models=self._models(),
        )
        self.supervisor = Supervisor(self.settings, connect=UpstreamPool)
        # model, lease, engine pid when taken, and whether something since may end that engine
        # though busy (a crash, an explicit unload, a config change that restarts it)
        self.held: list[list[Any]] = []
        self.transitions = Transitions()
        logging.getLogger("llamacontroller.supervisor.engine").addHandler(self.transitions)
        self.run(self.supervisor.start())

    def _models(self) -> ModelsConfig:
        return ModelsConfig(
            max_loaded_models=2,
            models=[model_entry(m, SMOLLM2, ctx_size=self.ctx[m], ttl=0, max_concurrency=8) for m in MODELS],
        )

    def run(self, work: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(work, 60))

    def attempt(self, work: Any) -> None:
        with contextlib.suppress(LlamaControllerError):  # a refusal (busy, failed start) is allowed
            self.run(work)

    # ------------------------------------------------------------------------------ rules

    @rule(model=st.sampled_from(MODELS))
    def load(self, model: str) -> None:
        self.attempt(self.supervisor.load(model))

    def may_end(self, model: str) -> None:
        for held in self.held:
            if held[0] == model:
                held[3] = True

    @rule(model=st.sampled_from(MODELS))
    def unload(self, model: str) -> None:
        self.may_end(model)
        self.attempt(self.supervisor.unload(model))

    @rule(model=st.sampled_from(MODELS))
    def switch(self, model: str) -> None:
        self.attempt(self.supervisor.switch(None, model))

    @rule(model=st.sampled_from(MODELS))
    def request(self, model: str) -> None:
        async def one() -> None:
            with await self.supervisor.resolve(model).acquire():
                await asyncio.sleep(0)

        self.attempt(one())

    @precondition(lambda self: len(self.held) < 3)
    @rule(model=st.sampled_from(MODELS))
    def begin_request(self, model: str) -> None:
        engine = self.supervisor.resolve(model)
        try:
            lease = self.run(engine.acquire())
        except LlamaControllerError:
            return
        self.held.append([model, lease, engine.pid, False])

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data())
    def end_request(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.held) - 1))
        lease = self.held.pop(index)[1]
        lease.release()
        self.run(asyncio.sleep(0.01))

    @rule(model=st.sampled_from(MODELS))
    def crash(self, model: str) -> None:
        pid = self.supervisor.resolve(model).pid
        if pid is None:
            return
        self.may_end(model)
        os.kill(pid, signal.SIGKILL)
        self.run(asyncio.sleep(0.3))  # the supervisor notices the exit

    @rule(model=st.sampled_from(MODELS), change=st.sampled_from(["ctx", "ttl"]))
    def reload(self, model: str, change: str) -> None:
        if change == "ctx":
            self.ctx[model] = 1024 if self.ctx[model] == 512 else 512
            self.may_end(model)  # a command change restarts it (after drain_timeout)
        models = self._models()
        if change == "ttl":
            models.models[MODELS.index(model)].ttl = 3600  # live: nothing may restart
        self.run(self.supervisor.apply_models(models))
        self.run(asyncio.sleep(0.05))

    # ------------------------------------------------------------------------- invariants

    @invariant()
    def one_process_per_model_and_it_is_the_named_one(self) -> None:
        self.run(asyncio.sleep(0.05))  # let exits and restarts in flight land
        live = live_engines(self.data_dir)
        for model, pids in live.items():
            engine = self.supervisor.engines[model]
            settled = engine.state in (State.READY, State.STOPPED, State.FAILED, State.SLEEPING)
            assert len(pids) <= 1 or not settled, f"{model}: {len(pids)} processes {pids} ({engine.state})"
            if settled and pids and engine.state is State.READY:
                assert pids == [engine.pid], f"{model}: live {pids}, supervisor names {engine.pid}"

    @invariant()
    def a_busy_model_is_not_ended_by_an_eviction_or_a_switch(self) -> None:
        for model, _lease, pid, exempt in self.held:
            if exempt or pid is None:
                continue
            engine = self.supervisor.engines[model]
            assert engine.pid == pid and engine.state in (State.READY, State.STOPPING), (
                f"{model} was busy on pid {pid}; now {engine.state} pid {engine.pid}"
            )

    @invariant()
    def every_transition_is_in_the_table(self) -> None:
        for model, old, new in self.transitions.seen:
            assert State(new) in TRANSITIONS[State(old)], f"{model}: {old} -> {new}"

    def teardown(self) -> None:
        try:
            for held in self.held:
                held[1].release()
            self.run(self.supervisor.close())
            deadline = self.loop.time() + 10
            while live_engines(self.data_dir) and self.loop.time() < deadline:
                self.run(asyncio.sleep(0.1))
            assert live_engines(self.data_dir) == {}, "engine processes outlived the supervisor"
        finally:
            logging.getLogger("llamacontroller.supervisor.engine").removeHandler(self.transitions)
            self.loop.close()


def test_supervisor_invariants_under_random_schedules(tmp_path: Path) -> None:
    SupervisorMachine.folder = tmp_path
    machine = SupervisorMachine.TestCase
    machine.settings = settings(
        max_examples=12,
        stateful_step_count=15,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    machine().runTest()
