"""Users and API tokens in the database, and the cached token check on the request path."""

from __future__ import annotations

import asyncio
import hmac
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import bcrypt
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from llamacontroller.auth.principal import (
    ROLES,
    SCOPES,
    Principal,
    effective_scopes,
    hash_token,
    narrow,
    new_token,
)
from llamacontroller.db.models import ApiToken, User, WebSession
from llamacontroller.errors import BadRequest, Conflict, NotFound, Unauthenticated

BCRYPT_COST = 12
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
# bcrypt reads at most 72 bytes, and bcrypt >= 5 raises on more (a 500, before this check).
MAX_PASSWORD_BYTES = 72
# The console (CLI) acts with the database's full power; the role cap still applies.
CONSOLE = Principal(None, "cli", "admin", scopes=frozenset(SCOPES))
# A bcrypt digest to check too-long passwords against, so they cost the same time as any other.
_DUMMY_DIGEST = bcrypt.hashpw(b"dummy", bcrypt.gensalt(4)).decode()


async def hash_password(password: str) -> str:
    # bcrypt at cost 12 takes ~250 ms: never on the event loop.
    salt = bcrypt.gensalt(BCRYPT_COST)
    digest = await asyncio.to_thread(bcrypt.hashpw, password.encode(), salt)
    return digest.decode()


async def check_password(password: str, digest: str) -> bool:
    secret = password.encode()
    if len(secret) > MAX_PASSWORD_BYTES:
        await asyncio.to_thread(bcrypt.checkpw, b"x", _DUMMY_DIGEST.encode())
        return False
    return await asyncio.to_thread(bcrypt.checkpw, secret, digest.encode())


_DURATION = re.compile(r"\s*(\d{1,9})\s*([smhdw])\s*")
MAX_DURATION = timedelta(days=3650)


def parse_duration(text: str) -> timedelta:
    """'30d', '12h', '15m', '45s', '2w' -> timedelta (at most ten years)."""
    match = _DURATION.fullmatch(text[:64])
    if not match or len(text) > 64:
        raise BadRequest(f"not a duration: {text[:64]!r} (use e.g. 30d, 12h, 15m)", param="expires_in")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[match.group(2)]
    duration = timedelta(**{unit: int(match.group(1))})
    if duration > MAX_DURATION:
        raise BadRequest("a duration may be at most ten years", param="expires_in")
    return duration


def validate_password(password: str) -> None:
    if len(password) < 8:
        raise BadRequest("password must be at least 8 characters", param="password")
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise BadRequest(f"password must be at most {MAX_PASSWORD_BYTES} bytes", param="password")


@dataclass(frozen=True, slots=True)
class NewToken:
    token: str  # shown once
    row: ApiToken


class AuthStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], cache_ttl: float) -> None:
        self.sessions = sessions
        self.cache_ttl = cache_ttl
        # hash -> (principal, valid until monotonic, token expiry). Revocation evicts explicitly.
        self._cache: dict[str, tuple[Principal, float, datetime | None]] = {}
        self._touched: dict[int, datetime] = {}
        # With several instances (auth/shared.py): tells the others what to drop from their caches.
        self.broadcast: Callable[[str | None], Awaitable[None]] | None = None

    def drop_cached(self, digest: str | None) -> None:
        """Forget one cached token (by its hash), or every one (None)."""
        if digest is None:
            self._cache.clear()
        else:
            self._cache.pop(digest, None)

    async def _revoked(self, digest: str | None) -> None:
        self.drop_cached(digest)
        if self.broadcast is not None:
            await self.broadcast(digest)

    # ---------------------------------------------------------------------------- users

    async def count_users(self) -> int:
        async with self.sessions() as db:
            return int(await db.scalar(select(func.count()).select_from(User)) or 0)

    async def create_user(self, username: str, password: str, role: str) -> User:
        if not _USERNAME.match(username):
            raise BadRequest(f"invalid username {username!r}", param="username")
        if role not in ROLES:
            raise BadRequest(f"role must be one of {', '.join(ROLES)}", param="role")
        validate_password(password)
        digest = await hash_password(password)
        async with self.sessions() as db:
            if await db.scalar(select(User).where(User.username == username)):
                raise Conflict(f"user {username!r} exists already")
            user = User(username=username, password_hash=digest, role=role)
            db.add(user)
            await db.commit()
            return user

    async def get_user(self, username: str) -> User:
        async with self.sessions() as db:
            user = await db.scalar(select(User).where(User.username == username))
        if user is None:
            raise NotFound(f"user {username!r} not found")
        return user

    async def list_users(self) -> list[User]:
        async with self.sessions() as db:
            return list(await db.scalars(select(User).order_by(User.id)))

    async def update_user(
        self, user_id: int, *, keep_session: str | None = None, **changes: Any
    ) -> tuple[User, dict[str, Any]]:
        """Apply role / disabled / password changes; returns the user and what it was before.
        Every dashboard session of the user ends, except `keep_session` (the one changing its
        own password)."""
        async with self.sessions() as db:
            user = await db.get(User, user_id)
            if user is None:
                raise NotFound(f"user {user_id} not found")
            before = {"role": user.role, "disabled": user.disabled}
            if changes.get("role") is not None:
                if changes["role"] not in ROLES:
                    raise BadRequest(f"role must be one of {', '.join(ROLES)}", param="role")
                user.role = changes["role"]
            if changes.get("disabled") is not None:
                user.disabled = bool(changes["disabled"])
            if changes.get("password") is not None:
                validate_password(changes["password"])
                user.password_hash = await hash_password(changes["password"])
            if any(changes.get(k) is not None for k in ("role", "disabled", "password")):
                # A changed password, role or a disabled account ends every dashboard session.
                await db.execute(
                    update(WebSession)
                    .where(
                        WebSession.user_id == user_id,
                        WebSession.revoked_at.is_(None),
                        WebSession.id_hash != (keep_session or ""),
                    )
                    .values(revoked_at=datetime.now(UTC))
                )
            await db.commit()
        await self._revoked(None)  # role or disabled changed what every token of theirs may do
        return user, before

    async def delete_user(self, user_id: int) -> User:
        async with self.sessions() as db:
            user = await db.get(User, user_id)
            if user is None:
                raise NotFound(f"user {user_id} not found")
            await db.delete(user)
            await db.commit()
        await self._revoked(None)
        return user

    async def authenticate_password(self, username: str, password: str) -> User | None:
        if not _USERNAME.match(username):
            await check_password(password, _DUMMY_DIGEST)  # no such user can exist: same cost anyway
            return None
        async with self.sessions() as db:
            user = await db.scalar(select(User).where(User.username == username))
        if user is None or user.disabled:
            await hash_password(password)  # same cost either way: no user enumeration by timing
            return None
        if not await check_password(password, user.password_hash):
            return None
        async with self.sessions() as db:
            row = await db.get(User, user.id)
            if row is not None:
                row.last_login_at = datetime.now(UTC)
                await db.commit()
        return user

    # --------------------------------------------------------------------------- tokens

    async def create_token(
        self,
        user: User,
        name: str,
        scopes: list[str] | None = None,
        models: list[str] | None = None,
        expires_in: str | None = None,
        limits: dict[str, int | None] | None = None,
        *,
        issuer: Principal = CONSOLE,
        trusted_frontend: bool = False,
    ) -> NewToken:
        """A new token for `user`, never broader than `issuer` (the credential asking for it)."""
        if not name or len(name) > 128:
            raise BadRequest("token name must be 1-128 characters", param="name")
        unknown = [s for s in scopes or [] if s not in SCOPES]
        if unknown:
            raise BadRequest(f"unknown scope(s): {', '.join(unknown)[:200]}", param="scopes")
        grant = narrow(
            issuer,
            owner_role=user.role,
            scopes=scopes,
            models=list(models or []),
            expires_at=datetime.now(UTC) + parse_duration(expires_in) if expires_in else None,
            limits=limits or {},
            trusted_frontend=trusted_frontend,
        )
        excess = set(grant.scopes) - effective_scopes(user.role, grant.scopes)
        if excess:
            raise BadRequest(f"role {user.role!r} cannot grant: {', '.join(sorted(excess))}", param="scopes")
        token = new_token()
        row = ApiToken(
            token_hash=hash_token(token),
            prefix=token[:10],
            name=name,
            user_id=user.id,
            scopes=" ".join(grant.scopes),
            models=" ".join(grant.models),
            expires_at=grant.expires_at,
            trusted_frontend=grant.trusted_frontend,
            **grant.limits,
        )
        async with self.sessions() as db:
            db.add(row)
            await db.commit()
        return NewToken(token, row)

    async def list_tokens(self, user_id: int | None = None) -> list[tuple[ApiToken, str]]:
        query = select(ApiToken, User.username).join(User, User.id == ApiToken.user_id).order_by(ApiToken.id)
        if user_id is not None:
            query = query.where(ApiToken.user_id == user_id)
        async with self.sessions() as db:
            return [(t, u) for t, u in (await db.execute(query)).all()]

    async def revoke_token(self, token_id: int, *, owner_id: int | None = None) -> ApiToken:
        async with self.sessions() as db:
            row = await db.get(ApiToken, token_id)
            if row is None or (owner_id is not None and row.user_id != owner_id):
                raise NotFound(f"token {token_id} not found")
            if row.revoked_at is None:
                row.revoked_at = datetime.now(UTC)
                await db.commit()
        await self._revoked(row.token_hash)
        return row

    def is_cached(self, token: str) -> bool:
        """Whether the token was verified recently and is still valid (no database call)."""
        cached = self._cache.get(hash_token(token))
        if cached is None or cached[1] <= time.monotonic():
            return False
        expires_at = cached[2]
        return expires_at is None or expires_at > datetime.now(UTC)

    async def verify(self, token: str) -> Principal:
        """The principal behind a bearer token. Cached: a hit costs one dict lookup."""
        digest = hash_token(token)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            principal, _, expires_at = cached
            if expires_at is not None and expires_at <= datetime.now(UTC):
                self._cache.pop(digest, None)
                raise Unauthenticated("API token expired")
            self._touch(principal)
            return principal
        async with self.sessions() as db:
            found = (
                await db.execute(
                    select(ApiToken, User).join(User, User.id == ApiToken.user_id).where(ApiToken.token_hash == digest)
                )
            ).first()
        # The index lookup already matched; the compare keeps this path constant-time anyway.
        if found is None or not hmac.compare_digest(found[0].token_hash, digest):
            secrets.compare_digest(digest, digest)
            raise Unauthenticated("invalid API token")
        row, user = found
        if row.revoked_at is not None:
            raise Unauthenticated("API token revoked")
        expires_at = _aware(row.expires_at)
        if expires_at is not None and expires_at <= datetime.now(UTC):
            raise Unauthenticated("API token expired")
        if user.disabled:
            raise Unauthenticated("user disabled")
        principal = Principal(
            user_id=user.id,
            username=user.username,
            role=user.role,
            token_id=row.id,
            scopes=effective_scopes(user.role, row.scopes.split()),
            models=frozenset(row.models.split()),
            rpm_limit=row.rpm_limit,
            tpm_limit=row.tpm_limit,
            parallel_limit=row.parallel_limit,
            expires_at=expires_at,
            trusted_frontend=row.trusted_frontend,
        )
        self._cache[digest] = (principal, now + self.cache_ttl, expires_at)
        self._touch(principal)
        return principal

    def _touch(self, principal: Principal) -> None:
        if principal.token_id is not None:
            self._touched[principal.token_id] = datetime.now(UTC)

    def take_touched(self) -> dict[int, datetime]:
        """Tokens used since the last call (the usage writer stores last_used_at in batches)."""
        touched, self._touched = self._touched, {}
        return touched


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands timezone-aware columns back naive; they were stored as UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
