"""Starting and killing engine processes so that none outlives the controller.

Three layers, because each alone has a hole:
- every child gets its own session (so its process group can be killed whole);
- every child gets PR_SET_PDEATHSIG=SIGKILL, so it dies when the controller dies, even by kill -9;
- every child is recorded in a pid file under data/run/, and the next controller start kills any
  recorded process that is still alive *and* still runs the recorded command line (pids get
  reused; we never kill a stranger).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

import psutil

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if os.name == "posix" else None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# What engines inherit of the controller's environment: what a process needs to run, find its
# libraries and GPUs, and engine tuning. Not the rest: the controller's own settings hold the
# admin password and the database URL. A model's `env:` adds anything else explicitly.
PASSED_ENV = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH", "SSL_CERT_FILE"}
)
PASSED_PREFIXES = (
    "LC_", "CUDA_", "NVIDIA_", "HIP_", "ROCR_", "ROCM_", "HSA_", "GGML_", "LLAMA_ARG_", "OMP_", "MKL_",
    "HF_", "VLLM_", "PYTORCH_", "TORCH", "TRANSFORMERS_", "XDG_",
)  # fmt: skip
SECRET_WORDS = ("TOKEN", "KEY", "PASSWORD", "SECRET")


def engine_environment(base: Mapping[str, str]) -> dict[str, str]:
    return {
        name: value
        for name, value in base.items()
        if (name in PASSED_ENV or name.startswith(PASSED_PREFIXES)) and not any(w in name for w in SECRET_WORDS)
    }


async def spawn(
    argv: Sequence[str], env: Mapping[str, str] | None = None, *, cwd: str | None = None
) -> asyncio.subprocess.Process:
    """Start argv (a list, never a shell) with stdout and stderr merged into one pipe, in a
    scrubbed environment plus `env`."""
    full_env = {**engine_environment(os.environ), **(env or {})}
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=full_env,
        cwd=cwd,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )


def kill_group(pid: int) -> None:
    """SIGKILL the process and its group: for an engine that no longer answers (even SIGSTOPped)."""
    _signal_group(pid, signal.SIGKILL)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)  # the child leads its own session, so its pgid is its pid


async def terminate(proc: asyncio.subprocess.Process, timeout: float) -> int:
    """SIGTERM the process group, wait `timeout`, then SIGKILL it; returns the exit code."""
    if proc.returncode is None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            log.warning("engine pid %s ignored SIGTERM for %.1fs; killing", proc.pid, timeout)
            _signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()
    else:
        _signal_group(proc.pid, signal.SIGKILL)  # leftovers in its group, if any
    return proc.returncode if proc.returncode is not None else -1


class PidFiles:
    """One JSON file per running engine: pid, command line, and the controller that owns it.
    Several controllers may share a data dir: each names its files with its own pid and reaps
    only engines whose controller is gone."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)

    def _path(self, model_id: str) -> Path:
        return self.run_dir / f"{quote(model_id, safe='')}.{os.getpid()}.pid"

    def record(self, model_id: str, pid: int, argv: Sequence[str]) -> None:
        payload = {"pid": pid, "argv": list(argv), "controller": os.getpid()}
        self._path(model_id).write_text(json.dumps(payload))

    def forget(self, model_id: str) -> None:
        self._path(model_id).unlink(missing_ok=True)

    def reap(self) -> list[int]:
        """Kill engines a previous controller left running; returns the pids killed."""
        killed = []
        for path in self.run_dir.glob("*.pid"):
            try:
                record = json.loads(path.read_text())
                pid, argv = int(record["pid"]), list(record["argv"])
            except (OSError, ValueError, KeyError, TypeError):
                path.unlink(missing_ok=True)
                continue
            owner = record.get("controller")
            if owner == os.getpid() or (isinstance(owner, int) and _controller_alive(owner)):
                continue  # ours, or a live controller's beside us
            if _runs(pid, argv):
                log.warning("killing engine pid %s left by a previous controller: %s", pid, argv[0])
                _signal_group(pid, signal.SIGKILL)
                with contextlib.suppress(psutil.Error):
                    psutil.Process(pid).wait(timeout=5)
                killed.append(pid)
            path.unlink(missing_ok=True)
        return killed


def _controller_alive(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and "llamacontroller" in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def _runs(pid: int, argv: Sequence[str]) -> bool:
    try:
        return psutil.Process(pid).cmdline() == list(argv)
    except psutil.Error:
        return False


def rss_bytes(pid: int | None) -> int | None:
    """Resident memory of the process and all its descendants (vLLM runs as four processes)."""
    if pid is None:
        return None
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0
    for proc in tree:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total
