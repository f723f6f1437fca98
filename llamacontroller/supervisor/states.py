"""The states of one model's engine and the only transitions allowed between them.

    stopped ──start──▶ starting ──healthy──▶ ready ──stop──▶ stopping ──exited──▶ stopped
                         │  │                  │                │
                         │  └──stop (cancel)───┼───────────────▶│
                         └──exit/timeout──▶ failed ◀──crash─────┘ (crash while draining)
    failed ──start──▶ starting;  failed ──unload──▶ stopped
    stopping ──drain refused──▶ ready   (an eviction that found the model still busy)
    stopping ──slept──▶ sleeping ──wake──▶ starting   (vLLM sleep_on_evict: process kept)
    sleeping ──unload──▶ stopping;  sleeping ──crash──▶ failed

docs/architecture.md carries the same table with the reasons behind each edge.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"
    SLEEPING = "sleeping"  # evicted by /sleep: the process lives, its memory is given back (GPU)


TRANSITIONS: dict[State, frozenset[State]] = {
    State.STOPPED: frozenset({State.STARTING}),
    State.STARTING: frozenset({State.READY, State.STOPPING, State.FAILED}),
    State.READY: frozenset({State.STOPPING, State.FAILED}),
    State.STOPPING: frozenset({State.STOPPED, State.READY, State.FAILED, State.SLEEPING}),
    State.FAILED: frozenset({State.STARTING, State.STOPPED}),
    State.SLEEPING: frozenset({State.STARTING, State.STOPPING, State.FAILED}),
}

# States in which the engine holds (or is about to hold) memory and a process.
LOADED = frozenset({State.STARTING, State.READY, State.STOPPING})


class IllegalTransition(RuntimeError):
    """A bug: some code tried a transition the table does not allow."""
