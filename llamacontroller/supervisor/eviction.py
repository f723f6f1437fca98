"""Which running models to stop so another can start. A pure function: no side effects."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Candidate:
    model_id: str
    bytes: int  # what stopping it would free
    in_flight: int
    last_used: float  # monotonic seconds


@dataclass(frozen=True, slots=True)
class Plan:
    victims: tuple[str, ...]
    fits: bool
    reason: str = ""


def plan_eviction(
    running: Sequence[Candidate],
    need_bytes: int,
    free_bytes: int,
    max_loaded: int,
) -> Plan:
    """Choose models to stop so that one more (needing `need_bytes`) fits.

    Idle models go first, least recently used first; busy ones only after every idle one, again
    LRU. The caller drains a busy victim before stopping it and gives up if it stays busy:
    a model with requests in flight is never killed for another.
    """
    order = sorted(running, key=lambda c: (c.in_flight > 0, c.last_used))
    victims: list[Candidate] = []
    freed = 0
    for candidate in order:
        over_count = len(running) - len(victims) >= max_loaded
        over_memory = free_bytes + freed < need_bytes
        if not over_count and not over_memory:
            break
        victims.append(candidate)
        freed += candidate.bytes
    if free_bytes + freed < need_bytes:
        return Plan(
            (),
            fits=False,
            reason=(
                f"needs {need_bytes / 2**20:.0f} MiB but only {(free_bytes + freed) / 2**20:.0f} MiB "
                "can be made available, even after stopping every other model"
            ),
        )
    return Plan(tuple(c.model_id for c in victims), fits=True)
