"""One proxied request, from waiting for a model slot to the last byte, for every dialect.

An `UpstreamCall` is an ASGI response. Its whole life (queueing for a slot, starting the model,
the upstream request, the body) runs as one task raced against the client's disconnect: when the
client goes, the task is cancelled, the upstream connection is closed, and the engine stops
generating. Errors before the first byte are rendered in the caller's dialect; after it they go
in-band (the dialect's translator decides how) and the stream ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from llamacontroller.errors import (
    LlamaControllerError,
    UpstreamError,
    UpstreamTimeout,
)
from llamacontroller.proxy.limits import ModelGate
from llamacontroller.proxy.upstream import Response as UpstreamResponse
from llamacontroller.proxy.upstream import UpstreamPool
from llamacontroller.proxy.usage import UsageTap
from llamacontroller.supervisor.engine import Engine, Lease

log = logging.getLogger(__name__)

# What passes from an engine's answer to the client: an allow-list, since an engine (or a remote
# upstream) must not set cookies, CORS or caching rules on the controller's origin. The ASGI server
# frames the body itself; passthrough keeps the engine's Content-Length.
PASSED_HEADERS = frozenset({b"content-type", b"content-length", b"cache-control", b"retry-after"})
MAX_HEADER_VALUE = 1024


def passed_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [
        (name, value)
        for name, value in headers
        if name in PASSED_HEADERS
        and len(value) <= MAX_HEADER_VALUE
        and value.isascii()
        and b"\r" not in value
        and b"\n" not in value
        and b"\0" not in value
    ]


STREAM_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


class Translator(Protocol):
    """Turns the engine's OpenAI-dialect answer into another dialect, chunk by chunk."""

    media_type: str

    def feed(self, chunk: bytes) -> bytes: ...
    def finish(self) -> bytes: ...
    def error(self, status: int, body: bytes) -> tuple[int, bytes]: ...
    def in_band_error(self, message: str) -> bytes: ...


@dataclass
class CallContext:
    engine: Engine
    gate: ModelGate
    dialect: str  # what the usage log records: openai, ollama
    render: Callable[[LlamaControllerError], Response]  # an error before the first byte, in the caller's dialect
    endpoint: str  # what the client called, e.g. /api/chat
    upstream_path: str  # what the engine is asked, e.g. /v1/chat/completions
    body: bytes
    request_id: str
    stream: bool
    record: Callable[[dict[str, Any]], None]  # gets the usage row at the end
    translator: Translator | None = None
    on_lease: Callable[[], None] | None = None  # e.g. Ollama's keep_alive, once the model is ready
    timeout: float = 600.0
    upstream_stream: bool | None = None  # the engine streams (SSE) even when the client did not ask to
    stream_done: bool = True  # the engine ends its streams with `data: [DONE]` (transformers does not)


class UpstreamCall(Response):
    def __init__(self, ctx: CallContext) -> None:
        super().__init__()  # status and headers come from the engine, in __call__
        self.ctx = ctx
        self.status = 0  # what the client got; 0 until the response starts
        self.ttft: float | None = None
        self.tap = UsageTap(stream=ctx.stream if ctx.upstream_stream is None else ctx.upstream_stream)
        self.began = time.perf_counter()
        self.error: str | None = None
        self.done = False  # the call ended (the listener must no longer cancel it)
        self.client_gone = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """As an ASGI response: a listener task tells `run` when the client leaves."""
        task = asyncio.current_task()
        assert task is not None
        listener = asyncio.ensure_future(self._listen(receive, task))
        try:
            await self.run(send)
        finally:
            listener.cancel()

    async def _listen(self, receive: Receive, task: asyncio.Task[Any]) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.client_left(task)

    def client_left(self, task: asyncio.Task[Any]) -> None:
        """The client disconnected: cancel the task running the call (unless it is over).
        Cancelling closes the upstream connection, which makes llama-server abort the
        generation (its slot goes idle at once). A client that closes as soon as it reads
        `data: [DONE]` (the openai client does) left after a whole answer: not a disconnect."""
        if not self.done and not (self.ctx.stream and self.tap.finished()):
            self.client_gone = True
            task.cancel()

    async def run(self, send: Send) -> None:
        """The whole call, in the caller's task."""

        async def tracked(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.done = True  # the response is over: from now on a close is not a disconnect
            await send(message)

        try:
            await self._run(tracked)
        except asyncio.CancelledError:
            if not self.client_gone:
                raise
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()
            self.status = self.status or 499
            self.error = "client disconnected"
            log.info(
                "request %s: client disconnected after %.0f ms; upstream closed",
                self.ctx.request_id,
                (time.perf_counter() - self.began) * 1000,
            )
        finally:
            self._record()

    async def _run(self, send: Send) -> None:
        ctx = self.ctx
        try:
            # A stop under way (a restart for a config change, an eviction) is waited out before
            # queueing for a slot: that wait is bounded by the drain, not by queue_timeout.
            await ctx.engine.stopped_or_settled()
            async with ctx.gate.slot():
                with await ctx.engine.acquire() as lease:
                    if ctx.on_lease:
                        ctx.on_lease()
                    upstream = await self._open_any(lease)
                    try:
                        await self._relay(upstream, send)
                    finally:
                        upstream.release()
        except LlamaControllerError as exc:
            await self._fail(send, exc)
        except TimeoutError:
            message = f"engine for {ctx.engine.id!r} did not answer in {ctx.timeout:.0f}s"
            await self._fail(send, UpstreamTimeout(message))
        except (ConnectionError, OSError) as exc:
            message = f"engine for {ctx.engine.id!r} failed: {type(exc).__name__}: {exc}".rstrip(": ")
            await self._fail(send, UpstreamError(message))

    async def _fail(self, send: Send, exc: LlamaControllerError) -> None:
        """Before the response started: an error response in the caller's dialect; after: in-band."""
        if self.status == 0:
            await self._send_error(send, exc)
        else:
            await self._in_band(send, exc.message)
            # The headers said 200, but the answer ended in an error: the usage row records that.
            self.status = exc.status

    async def _open_any(self, lease: Lease) -> UpstreamResponse:
        """Open the request on the lease's address; a remote model with several URLs moves on
        to the next healthy one when a URL refuses the connection."""
        while True:
            try:
                # The supervisor made the engine's connections with our factory (services/core.py).
                return await self._open(cast(UpstreamPool, lease.upstream))
            except OSError as exc:  # refused, reset, unreachable: nothing was answered
                if not lease.fail_over(f"{type(exc).__name__}: {exc}".rstrip(": ")):
                    raise

    def _open(self, pool: UpstreamPool) -> Awaitable[UpstreamResponse]:
        ctx = self.ctx
        headers = [(b"content-type", b"application/json"), (b"x-request-id", ctx.request_id.encode())]
        if ctx.stream or ctx.upstream_stream:
            # llama-server answers streams with "Keep-Alive" but closes the connection after them;
            # a pooled copy of it would fail the next request. Say it ourselves.
            headers.append((b"connection", b"close"))
        return pool.request(b"POST", ctx.upstream_path, headers, ctx.body, timeout=ctx.timeout)

    async def _relay(self, upstream: UpstreamResponse, send: Send) -> None:
        ctx = self.ctx
        translator = ctx.translator
        if translator is not None and upstream.status >= 400:
            status, body = translator.error(upstream.status, await upstream.read())
            self.status = status
            self.error = body.decode("utf-8", "replace")[:500]
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [(b"content-type", b"application/json"), *self._own_headers()],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        if translator is None:
            # Passthrough keeps the engine's Content-Length (the bytes are the same).
            headers = passed_headers(upstream.headers)
        else:
            headers = [(b"content-type", translator.media_type.encode())]
        if ctx.stream:
            present = {name for name, _ in headers}
            headers.extend(h for h in STREAM_HEADERS if h[0] not in present)
        headers.extend(self._own_headers())
        await send({"type": "http.response.start", "status": upstream.status, "headers": headers})
        self.status = upstream.status
        is_sse = upstream.header(b"content-type").startswith(b"text/event-stream")
        tap = self.tap
        ended = False
        async for chunk in upstream.chunks():
            if self.ttft is None:
                self.ttft = time.perf_counter() - self.began
            tap.feed(chunk)
            if translator is None:
                # The last piece of a passthrough answer ends the response in the same message.
                ended = upstream.at_end and not is_sse
                await send({"type": "http.response.body", "body": chunk, "more_body": not ended})
            elif out := translator.feed(chunk):
                await send({"type": "http.response.body", "body": out, "more_body": True})
        tail = b""
        if upstream.status < 400 and is_sse and not tap.finished():
            if ctx.stream_done:
                # An OpenAI stream always ends with "data: [DONE]"; without it the engine stopped early.
                raise UpstreamError(f"the engine for {ctx.engine.id!r} ended the stream early")
            tail = b"data: [DONE]\n\n"  # an engine that never says it: our clients get it all the same
        if not ended:
            tail = translator.finish() if translator is not None else tail
            await send({"type": "http.response.body", "body": tail})
        if upstream.status >= 400:
            self.error = tap.error_message()

    def _own_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"x-request-id", self.ctx.request_id.encode())]

    async def _send_error(self, send: Send, exc: LlamaControllerError) -> None:
        response = self.ctx.render(exc)
        response.headers["x-request-id"] = self.ctx.request_id
        self.status = exc.status
        self.error = exc.message
        await response({"type": "http"}, _no_receive, send)

    async def _in_band(self, send: Send, message: str) -> None:
        self.error = message
        log.warning("request %s: error after the response started: %s", self.ctx.request_id, message)
        translator = self.ctx.translator
        if translator is not None:
            payload = translator.in_band_error(message)
        else:
            event = {"error": {"message": message, "type": "server_error", "param": None, "code": "upstream_error"}}
            payload = b"data: " + json.dumps(event).encode() + b"\n\n"
        with contextlib.suppress(Exception):  # the client may be gone too
            await send({"type": "http.response.body", "body": payload, "more_body": False})

    def _record(self) -> None:
        prompt, completion = self.tap.tokens()
        self.ctx.record(
            {
                "request_id": self.ctx.request_id,
                "model": self.ctx.engine.id,
                "endpoint": self.ctx.endpoint,
                "dialect": self.ctx.dialect,
                "status": self.status or 500,
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "ttft_ms": round(self.ttft * 1000, 2) if self.ttft is not None else None,
                "duration_ms": round((time.perf_counter() - self.began) * 1000, 2),
            }
        )


async def _no_receive() -> dict[str, Any]:
    return {"type": "http.disconnect"}
