"""Per-token limits: requests per minute, tokens per minute (prompt + completion, counted from
usage as answers finish), and requests in parallel. In memory, per controller process; with
`redis_url`, shared by every instance (auth/shared.py)."""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable

from llamacontroller.auth.principal import Principal
from llamacontroller.errors import Overloaded

WINDOW = 60.0
REQUESTS, TOKENS, PARALLEL = 1, 2, 3  # which limit refused

Release = Callable[[int], None]  # called when the request ends, with the tokens it used


def _noop(tokens: int) -> None:
    return None


class TokenLimits:
    def __init__(self) -> None:
        self._requests: dict[int, deque[float]] = defaultdict(deque)
        self._tokens: dict[int, deque[tuple[float, int]]] = defaultdict(deque)
        self._parallel: dict[int, int] = defaultdict(int)

    async def admit(self, principal: Principal) -> Release:
        """Count one request against the token's limits, or raise Overloaded (429).
        Returns the function to call when it ends, with the tokens it used."""
        token = principal.token_id
        if token is None or not (principal.rpm_limit or principal.tpm_limit or principal.parallel_limit):
            return _noop
        now = time.monotonic()
        requests = self._requests[token]
        while requests and now - requests[0] > WINDOW:
            requests.popleft()
        used = self._tokens[token]
        while used and now - used[0][0] > WINDOW:
            used.popleft()
        spent = sum(n for _, n in used)
        if principal.rpm_limit and len(requests) >= principal.rpm_limit:
            raise refusal(principal, REQUESTS, len(requests), spent, WINDOW - (now - requests[0]))
        if principal.tpm_limit and spent >= principal.tpm_limit:
            raise refusal(principal, TOKENS, len(requests), spent, WINDOW - (now - used[0][0]))
        if principal.parallel_limit and self._parallel[token] >= principal.parallel_limit:
            raise refusal(principal, PARALLEL, len(requests), spent, 1.0)
        requests.append(now)
        self._parallel[token] += 1

        def release(tokens: int) -> None:
            self._parallel[token] -= 1
            if tokens:
                self._tokens[token].append((time.monotonic(), tokens))

        return release


def refusal(principal: Principal, which: int, requests: int, spent: int, wait: float) -> Overloaded:
    """The 429 for a limit reached, with OpenAI's X-RateLimit-* headers."""
    headers = {}
    if principal.rpm_limit:
        headers["X-RateLimit-Limit-Requests"] = str(principal.rpm_limit)
        headers["X-RateLimit-Remaining-Requests"] = str(max(0, principal.rpm_limit - requests))
    if principal.tpm_limit:
        headers["X-RateLimit-Limit-Tokens"] = str(principal.tpm_limit)
        headers["X-RateLimit-Remaining-Tokens"] = str(max(0, principal.tpm_limit - spent))
    what, kind = {
        REQUESTS: (f"{principal.rpm_limit} requests per minute", "Requests"),
        TOKENS: (f"{principal.tpm_limit} tokens per minute", "Tokens"),
        PARALLEL: (f"{principal.parallel_limit} requests in parallel", None),
    }[which]
    if kind:
        headers[f"X-RateLimit-Reset-{kind}"] = f"{max(wait, 0):.1f}s"
    error = Overloaded(f"rate limit for this token reached: {what}", retry_after=max(wait, 1.0))
    error.headers = headers
    return error
