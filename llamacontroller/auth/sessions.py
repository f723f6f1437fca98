"""Dashboard sessions, CSRF tokens and the login guard (lockout after repeated failures).

The cookie holds a random session id signed with a key kept in the data dir; the database holds
only the id's SHA-256, the user, a CSRF token and times. Sessions end on logout (revoked), after
`session_idle_timeout` without use, or `session_absolute_timeout` after login.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from llamacontroller.auth.principal import ROLE_SCOPES, Principal
from llamacontroller.config import AuthConfig
from llamacontroller.db.models import User, WebSession
from llamacontroller.errors import Forbidden, Overloaded

COOKIE = "lc_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TOUCH_EVERY = timedelta(seconds=60)  # last_seen_at is written at most once a minute


def secret_key(data_dir: Path) -> bytes:
    """The cookie-signing key: made once, kept in the data dir with owner-only permissions."""
    path = data_dir / "secret_key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class SessionInfo:
    principal: Principal
    csrf_token: str
    id_hash: str


class Sessions:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], config: AuthConfig, key: bytes) -> None:
        self.db = sessions
        self.config = config
        self.signer = URLSafeSerializer(key, salt="llamacontroller-session")

    async def create(self, user: User, client_ip: str | None, user_agent: str | None) -> tuple[str, str]:
        """A new session for `user`: (cookie value, csrf token)."""
        session_id = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        async with self.db() as db:
            db.add(
                WebSession(
                    id_hash=_hash(session_id),
                    user_id=user.id,
                    csrf_token=csrf,
                    client_ip=client_ip,
                    user_agent=(user_agent or "")[:256] or None,
                )
            )
            await db.commit()
        return self.signer.dumps(session_id), csrf

    async def lookup(self, cookie: str) -> SessionInfo | None:
        try:
            session_id = self.signer.loads(cookie)
        except BadSignature:
            return None
        if not isinstance(session_id, str):
            return None
        id_hash = _hash(session_id)
        now = datetime.now(UTC)
        async with self.db() as db:
            row = (
                await db.execute(
                    select(WebSession, User)
                    .join(User, User.id == WebSession.user_id)
                    .where(WebSession.id_hash == id_hash)
                )
            ).first()
            if row is None:
                return None
            session, user = row
            created, seen = _aware(session.created_at), _aware(session.last_seen_at)
            if (
                session.revoked_at is not None
                or user.disabled
                or now - seen > timedelta(seconds=self.config.session_idle_timeout)
                or now - created > timedelta(seconds=self.config.session_absolute_timeout)
            ):
                return None
            if now - seen > TOUCH_EVERY:
                await db.execute(update(WebSession).where(WebSession.id_hash == id_hash).values(last_seen_at=now))
                await db.commit()
        principal = Principal(user.id, user.username, user.role, scopes=ROLE_SCOPES.get(user.role, frozenset()))
        return SessionInfo(principal, session.csrf_token, id_hash)

    async def revoke(self, id_hash: str) -> None:
        async with self.db() as db:
            await db.execute(
                update(WebSession).where(WebSession.id_hash == id_hash).values(revoked_at=datetime.now(UTC))
            )
            await db.commit()


def check_csrf(method: str, expected: str, given: str | None) -> None:
    """State-changing requests made with a session cookie must echo the session's CSRF token."""
    if method in SAFE_METHODS:
        return
    if not expected or not given or not hmac.compare_digest(expected, given):
        raise Forbidden("missing or wrong CSRF token")


class LoginGuard:
    """Counts login attempts per (username, IP) and per client IP; `threshold` failures for one
    username from one IP within `seconds` lock that pair out, and `IP_FACTOR` times as many from
    one IP (password spraying over many usernames) lock the IP out, until the period has passed
    since the last one. Not per username alone: then anyone could lock `admin` out from everywhere.

    An attempt counts as a failure from the moment it starts (`begin`) until it succeeds, so
    concurrent attempts cannot slip past the count while bcrypt runs. The table is bounded: at
    most `max_keys` entries, the least recently used dropped first, usernames cut to 64
    characters (no valid username is longer). In memory: a restart forgets the counts, and
    several controllers each count their own, unless they share Redis (auth/shared.py)."""

    IP_FACTOR = 4

    def __init__(self, threshold: int, seconds: float, max_keys: int = 10_000) -> None:
        self.threshold = threshold
        self.seconds = seconds
        self.max_keys = max_keys
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    @staticmethod
    def _keys(username: str, ip: str | None) -> tuple[str, str]:
        return f"ip:{ip}", f"user:{username[:64].lower()}@{ip}"

    def _limit(self, key: str) -> int:
        return self.threshold * self.IP_FACTOR if key.startswith("ip:") else self.threshold

    def _recent(self, key: str, now: float) -> deque[float]:
        failures = self._failures.get(key)
        if failures is None:
            failures = self._failures[key] = deque(maxlen=self._limit(key))
            while len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(key)
        while failures and now - failures[0] > self.seconds:
            failures.popleft()
        return failures

    async def begin(self, username: str, ip: str | None) -> None:
        """Before checking a password: refuse (429) when locked out, else count the attempt."""
        now = time.monotonic()
        keys = self._keys(username, ip)
        for key in keys:
            failures = self._recent(key, now)
            if len(failures) >= self._limit(key):
                wait = self.seconds - (now - failures[-1])
                raise Overloaded(f"too many failed logins; try again in {wait:.0f}s", retry_after=wait)
        for key in keys:
            self._recent(key, now).append(now)

    async def succeeded(self, username: str, ip: str | None) -> None:
        ip_key, user_key = self._keys(username, ip)
        self._failures.pop(user_key, None)
        failures = self._failures.get(ip_key)
        if failures:
            failures.pop()  # this attempt was no failure after all


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
