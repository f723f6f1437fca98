"""A token can only mint tokens that are a subset of itself (the bug: an inference-only token
restricted to one model minted an unrestricted admin token)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from llamacontroller.auth.principal import ROLE_SCOPES, Principal, narrow
from llamacontroller.errors import Forbidden

SOON = datetime.now(UTC) + timedelta(days=1)
NARROW = Principal(
    1, "admin", "admin", token_id=7, scopes=frozenset({"inference"}), models=frozenset({"smollm2"}),
    rpm_limit=10, expires_at=SOON,
)  # fmt: skip
SESSION = Principal(1, "admin", "admin", scopes=ROLE_SCOPES["admin"])


def grant(issuer: Principal, **asked: object) -> object:
    args: dict[str, object] = {"owner_role": "admin", "scopes": None, "models": [], "expires_at": None, "limits": {}}
    return narrow(issuer, **{**args, **asked})  # type: ignore[arg-type]


def test_narrow_token_cannot_mint_broader_token() -> None:
    inherited = grant(NARROW)
    assert inherited.scopes == ("inference",)  # type: ignore[attr-defined]
    assert inherited.models == ("smollm2",)  # type: ignore[attr-defined]
    assert inherited.expires_at == SOON  # type: ignore[attr-defined]
    assert inherited.limits["rpm_limit"] == 10  # type: ignore[attr-defined]
    for asked in (
        {"scopes": ["inference", "admin"]},
        {"scopes": ["models:manage"]},
        {"models": ["smollm2", "gemma3"]},
        {"expires_at": SOON + timedelta(seconds=1)},
        {"limits": {"rpm_limit": 11}},
        {"trusted_frontend": True},
    ):
        with pytest.raises(Forbidden):
            grant(NARROW, **asked)


def test_narrower_asks_are_granted() -> None:
    asked = grant(NARROW, expires_at=SOON - timedelta(hours=1), limits={"rpm_limit": 5, "tpm_limit": 100})
    assert asked.limits == {"rpm_limit": 5, "tpm_limit": 100, "parallel_limit": None}  # type: ignore[attr-defined]


def test_a_dashboard_session_grants_its_role() -> None:
    full = grant(SESSION, trusted_frontend=True)
    assert set(full.scopes) == ROLE_SCOPES["admin"] and full.models == ()  # type: ignore[attr-defined]
    user = grant(Principal(2, "u", "user", scopes=ROLE_SCOPES["user"]), owner_role="user")
    assert user.scopes == ("inference",)  # type: ignore[attr-defined]
