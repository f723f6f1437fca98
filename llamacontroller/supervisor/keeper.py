"""Keeps an engine's whole process tree tied to the controller: `python -m
llamacontroller.supervisor.keeper ENGINE_ARGV...`. Standard library only (it starts in ~20 ms).

vLLM's API server starts an engine-core process, which starts a worker; `text-generation-launcher`
starts a router and shards. The parent-death signal (spawn.py) reaches only the process the
controller started, and a grandchild whose parent dies is adopted by init and lives on, holding
gigabytes. So for backends that fork, the controller starts this keeper instead:

- it is the group leader (spawn gives it a new session), and the engine and its children stay in
  its group, so the controller's stop (SIGTERM to the group, then SIGKILL) reaches all of them;
- it is a child subreaper: orphans of the engine are re-parented to it, not to init;
- when the controller dies (even by kill -9) it gets SIGUSR1 (its parent-death signal) and ends
  the group: SIGTERM, then SIGKILL after GRACE seconds;
- when the engine's main process exits (a crash, a kill -9), it ends the rest of the group the same
  way and exits with the engine's exit code, so the controller sees the crash and a restart finds
  the memory free.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
GRACE = 2.0  # vLLM exits 1.4-2.2 s after SIGTERM on CPU


def end_group(grace: float = GRACE) -> None:
    """SIGTERM every other process of our group, wait up to `grace`, then SIGKILL what is left."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.killpg(0, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and others():
        reap()
        time.sleep(0.05)
    for pid in others():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def others() -> list[int]:
    """The processes of our group other than us that still run (zombies do not count)."""
    me, group = os.getpid(), os.getpgrp()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()  # after "pid (comm) "
        if int(fields[2]) == group and fields[0] != b"Z":
            found.append(int(entry))
    return found


def reap() -> None:
    """Collect exited children, adopted orphans included, so they do not linger as zombies."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def on_parent_death(*_: object) -> None:
    end_group()
    os._exit(1)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m llamacontroller.supervisor.keeper ENGINE_ARGV...", file=sys.stderr)
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getppid()
    # Replace the SIGKILL parent-death signal spawn() set with one we can act on.
    signal.signal(signal.SIGUSR1, on_parent_death)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGUSR1, 0, 0, 0)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    if os.getppid() != parent:  # the controller died before the signal was armed
        return 1
    # The controller's stop sends SIGTERM to the whole group: the engine gets it too, and we
    # wait for it to exit (the controller's SIGKILL to the group follows if it does not).
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        engine = subprocess.Popen(argv)  # inherits our group, stdout and environment
    except OSError as exc:
        print(f"keeper: cannot run {argv[0]}: {exc.strerror or exc}", file=sys.stderr)
        return 127
    code = engine.wait()
    end_group()
    reap()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
