"""The login guard: bounded, counts concurrent attempts, and cannot be used to lock a user out
from everywhere."""

from __future__ import annotations

import contextlib
import secrets

import pytest

from llamacontroller.auth.sessions import LoginGuard
from llamacontroller.errors import Overloaded


async def test_ten_thousand_random_usernames_leave_the_guard_bounded() -> None:
    guard = LoginGuard(threshold=5, seconds=300, max_keys=1000)
    for i in range(10_000):
        with contextlib.suppress(Overloaded):
            await guard.begin(secrets.token_hex(512), f"10.0.{i // 250}.{i % 250}")  # 1 KB usernames
    assert len(guard) <= 1000
    assert all(len(key) < 100 for key in guard._failures)  # usernames are cut


async def test_concurrent_attempts_count_before_they_finish() -> None:
    guard = LoginGuard(threshold=3, seconds=300)
    for _ in range(3):
        await guard.begin("admin", "1.2.3.4")  # three attempts in flight, none finished yet
    with pytest.raises(Overloaded):
        await guard.begin("admin", "1.2.3.4")


async def test_a_lockout_from_one_address_does_not_lock_the_user_out_elsewhere() -> None:
    guard = LoginGuard(threshold=3, seconds=300)
    for _ in range(3):
        await guard.begin("admin", "6.6.6.6")
    with pytest.raises(Overloaded):
        await guard.begin("admin", "6.6.6.6")
    await guard.begin("admin", "10.0.0.1")  # the real admin, elsewhere
    await guard.succeeded("admin", "10.0.0.1")


async def test_one_address_spraying_many_usernames_is_locked_out() -> None:
    guard = LoginGuard(threshold=3, seconds=300)
    for i in range(3 * LoginGuard.IP_FACTOR):
        await guard.begin(f"user{i}", "6.6.6.6")
    with pytest.raises(Overloaded):
        await guard.begin("someone-else", "6.6.6.6")


async def test_success_forgives_the_attempt() -> None:
    guard = LoginGuard(threshold=2, seconds=300)
    for _ in range(5):
        await guard.begin("olive", "1.1.1.1")
        await guard.succeeded("olive", "1.1.1.1")
