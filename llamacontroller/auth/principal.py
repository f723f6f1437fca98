"""Who is calling and what they may do. Pure logic: no database, no HTTP."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

from llamacontroller.errors import Forbidden

SCOPES = ("inference", "models:manage", "admin")
ROLES = ("admin", "operator", "user")

# A token never grants more than its owner's role allows.
ROLE_SCOPES: dict[str, frozenset[str]] = {
    "admin": frozenset(SCOPES),
    "operator": frozenset({"inference", "models:manage"}),
    "user": frozenset({"inference"}),
}
DEFAULT_SCOPES: dict[str, tuple[str, ...]] = {
    "admin": ("inference", "models:manage", "admin"),
    "operator": ("inference", "models:manage"),
    "user": ("inference",),
}

TOKEN_PREFIX = "lc_"  # noqa: S105 - a prefix, not a secret


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: int | None
    username: str | None
    role: str | None
    token_id: int | None = None
    scopes: frozenset[str] = frozenset()
    models: frozenset[str] = field(default_factory=frozenset)  # empty = every model
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    parallel_limit: int | None = None

    @classmethod
    def anonymous(cls) -> Principal:
        return cls(None, None, None, scopes=frozenset({"inference"}))

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise Forbidden(f"this credential lacks the {scope!r} scope")

    def may_use(self, model_id: str) -> bool:
        return not self.models or model_id in self.models

    def require_model(self, model_id: str) -> None:
        if not self.may_use(model_id):
            raise Forbidden(f"this token may not use model {model_id!r}", param="model")


def effective_scopes(role: str, scopes: list[str] | tuple[str, ...]) -> frozenset[str]:
    return frozenset(scopes) & ROLE_SCOPES.get(role, frozenset())
