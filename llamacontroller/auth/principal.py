"""Who is calling and what they may do. Pure logic: no database, no HTTP."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import datetime

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
    expires_at: datetime | None = None
    # Set by an admin on a token that a front end (Open WebUI) uses on behalf of its own users:
    # only then are its X-OpenWebUI-User-* headers believed and recorded.
    trusted_frontend: bool = False

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


LIMITS = ("rpm_limit", "tpm_limit", "parallel_limit")


@dataclass(frozen=True, slots=True)
class Grant:
    """What a new token may do: never more than the credential that creates it."""

    scopes: tuple[str, ...]
    models: tuple[str, ...]
    expires_at: datetime | None
    limits: dict[str, int | None]
    trusted_frontend: bool = False


def narrow(
    issuer: Principal,
    *,
    owner_role: str,
    scopes: list[str] | None,
    models: list[str],
    expires_at: datetime | None,
    limits: dict[str, int | None],
    trusted_frontend: bool = False,
) -> Grant:
    """The grant a token `issuer` may hand out: a subset of itself in scopes, models, expiry and
    limits. Whatever is left out is inherited from the issuer, so a narrow token can only ever
    mint narrower ones (the bug: an inference-only token minted admin tokens)."""
    wanted = list(scopes) if scopes else [s for s in DEFAULT_SCOPES.get(owner_role, ()) if s in issuer.scopes]
    beyond = sorted(set(wanted) - issuer.scopes)
    if beyond:
        raise Forbidden(f"this credential cannot grant scope(s) it lacks: {', '.join(beyond)}", param="scopes")
    if issuer.models:
        if not models:
            models = sorted(issuer.models)
        elif outside := sorted(set(models) - issuer.models):
            shown = ", ".join(outside)[:200]
            raise Forbidden(f"this credential cannot grant model(s) it may not use: {shown}", param="models")
    if issuer.expires_at is not None:
        if expires_at is None:
            expires_at = issuer.expires_at
        elif expires_at > issuer.expires_at:
            raise Forbidden("a new token cannot outlive the credential that creates it", param="expires_in")
    narrowed: dict[str, int | None] = {}
    for name in LIMITS:
        own, asked = getattr(issuer, name), limits.get(name)
        if own is not None and asked is not None and asked > own:
            raise Forbidden(f"{name} cannot be looser than this credential's ({own})", param=name)
        narrowed[name] = asked if asked is not None else own
    if trusted_frontend and not issuer.is_admin:
        raise Forbidden("only admins mark a token as a trusted front end", param="trusted_frontend")
    return Grant(tuple(wanted), tuple(models), expires_at, narrowed, trusted_frontend)
