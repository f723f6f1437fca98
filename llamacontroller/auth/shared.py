"""What several controllers share through Redis (`redis_url`): per-token rate limits, login
lockout counts, and the revocation of cached tokens. Each is one atomic Lua script or one
publish, against Redis's own clock, so the instances agree however their clocks drift.

Without Redis, `TokenLimits` and `LoginGuard` keep the same counts in each process and a revoked
token is dropped from the other processes' caches only when its cache entry expires
(`auth.token_cache_ttl`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as redis

from llamacontroller.auth.principal import Principal
from llamacontroller.auth.ratelimit import WINDOW, Release, TokenLimits, _noop, refusal
from llamacontroller.auth.sessions import LoginGuard
from llamacontroller.errors import Overloaded, ServiceUnavailable

log = logging.getLogger(__name__)

PREFIX = "llamacontroller:"
CHANNEL = PREFIX + "auth"  # "token:<sha256>" drops one cached token, "all" every one

# KEYS: requests, tokens, parallel. ARGV: window, rpm, tpm, parallel, request member.
# Returns {verdict, requests in window, tokens in window, seconds until the oldest leaves}.
ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local window, rpm, tpm, par = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
local n = redis.call('ZCARD', KEYS[1])
local spent = 0
for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  spent = spent + tonumber(string.match(m, ':(%d+)$'))
end
local function wait(key)
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if first[2] then return tostring(window - (now - tonumber(first[2]))) end
  return '0'
end
if rpm > 0 and n >= rpm then return {1, n, spent, wait(KEYS[1])} end
if tpm > 0 and spent >= tpm then return {2, n, spent, wait(KEYS[2])} end
if par > 0 and tonumber(redis.call('GET', KEYS[3]) or '0') >= par then return {3, n, spent, '1'} end
redis.call('ZADD', KEYS[1], now, ARGV[5])
redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000))
if par > 0 then
  redis.call('INCR', KEYS[3])
  redis.call('EXPIRE', KEYS[3], 3600)
end
return {0, n, spent, '0'}
"""

# KEYS: tokens, parallel. ARGV: window, tokens used, member, parallel counted (0/1).
RELEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
if ARGV[4] == '1' and tonumber(redis.call('GET', KEYS[2]) or '0') > 0 then redis.call('DECR', KEYS[2]) end
if tonumber(ARGV[2]) > 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[3] .. ':' .. ARGV[2])
  redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1]) * 1000))
end
return 0
"""

# KEYS: ip key, user key. ARGV: seconds, ip limit, user limit, member.
# Returns {0} (counted) or {1, seconds to wait}.
LOGIN_BEGIN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local seconds = tonumber(ARGV[1])
local limits = {tonumber(ARGV[2]), tonumber(ARGV[3])}
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - seconds)
  if redis.call('ZCARD', key) >= limits[i] then
    local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    return {1, tostring(seconds - (now - tonumber(last[2])))}
  end
end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[4])
  redis.call('PEXPIRE', key, math.ceil(seconds * 1000))
end
return {0}
"""


class Shared:
    """One Redis connection pool for everything the instances share."""

    def __init__(self, url: str) -> None:
        self.redis: redis.Redis = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._admit = self.redis.register_script(ADMIT)
        self._release = self.redis.register_script(RELEASE)
        self._login = self.redis.register_script(LOGIN_BEGIN)
        self._tasks: set[asyncio.Task[Any]] = set()

    async def close(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.redis.aclose()

    def background(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ token cache revocation

    async def publish_revocation(self, digest: str | None) -> None:
        """Tell every instance to drop a cached token (None: every cached token). The database
        already says revoked: if Redis is down, the others drop it when their cache entry expires."""
        try:
            await self.redis.publish(CHANNEL, f"token:{digest}" if digest else "all")
        except (redis.RedisError, OSError) as exc:
            log.warning("could not tell the other instances of a revocation (%s); their caches expire it", exc)

    async def listen(self, drop: Callable[[str | None], None]) -> None:
        """Apply other instances' revocations until cancelled; reconnects after a Redis outage
        (and then drops every cached token: a revocation may have been missed)."""
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    drop(None)
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        data = message["data"].decode()
                        drop(data.removeprefix("token:") if data.startswith("token:") else None)
            except (redis.RedisError, OSError) as exc:
                log.warning("Redis subscription lost (%s); retrying in 1s", exc)
                await asyncio.sleep(1)


class SharedLimits(TokenLimits):
    """TokenLimits counted in Redis, across every instance."""

    def __init__(self, shared: Shared) -> None:
        super().__init__()
        self.shared = shared

    async def admit(self, principal: Principal) -> Release:
        token = principal.token_id
        if token is None or not (principal.rpm_limit or principal.tpm_limit or principal.parallel_limit):
            return _noop
        keys = [f"{PREFIX}rl:{token}:{kind}" for kind in ("requests", "tokens", "parallel")]
        member = secrets.token_hex(8)
        parallel = principal.parallel_limit or 0
        try:
            verdict, requests, spent, wait = await self.shared._admit(
                keys=keys, args=[WINDOW, principal.rpm_limit or 0, principal.tpm_limit or 0, parallel, member]
            )
        except (redis.RedisError, OSError) as exc:
            raise unavailable(exc) from None
        if verdict:
            raise refusal(principal, int(verdict), int(requests), int(spent), float(wait))

        def release(tokens: int) -> None:
            self.shared.background(
                self.shared._release(keys=[keys[1], keys[2]], args=[WINDOW, tokens, member, int(parallel > 0)])
            )

        return release


class SharedLoginGuard(LoginGuard):
    """LoginGuard counted in Redis: a lockout holds on every instance."""

    def __init__(self, shared: Shared, threshold: int, seconds: float) -> None:
        super().__init__(threshold, seconds)
        self.shared = shared

    async def begin(self, username: str, ip: str | None) -> None:
        ip_key, user_key = self._keys(username, ip)
        try:
            result = await self.shared._login(
                keys=[PREFIX + "login:" + ip_key, PREFIX + "login:" + user_key],
                args=[self.seconds, self._limit(ip_key), self._limit(user_key), secrets.token_hex(8)],
            )
        except (redis.RedisError, OSError) as exc:
            raise unavailable(exc) from None
        if int(result[0]):
            wait = float(result[1])
            raise Overloaded(f"too many failed logins; try again in {wait:.0f}s", retry_after=wait)

    async def succeeded(self, username: str, ip: str | None) -> None:
        ip_key, user_key = self._keys(username, ip)
        async with self.shared.redis.pipeline() as pipe:
            pipe.delete(PREFIX + "login:" + user_key)
            pipe.zpopmax(PREFIX + "login:" + ip_key)  # this attempt was no failure after all
            with contextlib.suppress(redis.RedisError):
                await pipe.execute()



def unavailable(exc: BaseException) -> ServiceUnavailable:
    log.error("Redis did not answer: %s", exc)
    return ServiceUnavailable("shared state (Redis) is unavailable; retry shortly", retry_after=2)
