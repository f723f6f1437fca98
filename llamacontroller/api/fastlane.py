"""The fast lane: OpenAI passthrough POSTs served by the HTTP protocol itself, without ASGI.

Why: on a cheap call (`POST /tokenize`) the controller's CPU per request decides its throughput,
and measured on the CI machine uvicorn's ASGI cycle (scope, task, middleware, message dicts,
header validation) cost ~60 µs of it, FastAPI's routing and dependencies more again
(docs/benchmarks.md). `LaneProtocol` is uvicorn's own httptools protocol; when a request is a
POST to one of `openai.PASSTHROUGH` and carries an API token, it runs the very same handler
(`openai.proxy`, the token cache, the error renderer) and writes the answer to the socket
itself. Every other request — and these ones when they come pipelined behind another, over
HTTP/1.0, or with a session cookie instead of a token — goes through ASGI to the FastAPI routes,
which serve the same paths with the same handler.

How it fits uvicorn: a lane request stands in the protocol's `cycle` slot, so uvicorn's own
callbacks feed it the body (`body`, `more_body`, `message_event.set()`), queue a pipelined
request behind it, tell it about a disconnect (`disconnected`) and a shutdown (`keep_alive`).
This relies on uvicorn internals; pyproject pins the minor version and tests/integration
drive every path (pipelining, HTTP/1.0, disconnects) through a real socket.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import httptools
from fastapi import FastAPI
from starlette.responses import Response
from starlette.types import Message
from uvicorn.middleware.proxy_headers import _TrustedHosts
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from llamacontroller.api import openai
from llamacontroller.api.deps import MAX_BODY
from llamacontroller.api.dispatch import Origin
from llamacontroller.api.errors import Dialect, error_response, render
from llamacontroller.api.frontdoor import credential
from llamacontroller.errors import LlamaControllerError
from llamacontroller.proxy.call import UpstreamCall

if TYPE_CHECKING:
    from llamacontroller.app import Services

log = logging.getLogger(__name__)

PATHS = {path.encode(): path for path in openai.PASSTHROUGH}


class Lane:
    """What every connection's protocol shares: the app (its services exist once started) and
    which peers may set X-Forwarded-For."""

    def __init__(self, app: FastAPI, trusted_proxies: list[str]) -> None:
        self.app = app
        self.trusted = _TrustedHosts(trusted_proxies)

    @property
    def services(self) -> Services | None:
        return getattr(self.app.state, "services", None)

    def client(self, peer: tuple[str, int] | None, headers: list[tuple[bytes, bytes]]) -> tuple[str, int] | None:
        """The client address, as uvicorn's ProxyHeadersMiddleware would set it."""
        if peer is None or peer[0] not in self.trusted:
            return peer
        forwarded = [value for name, value in headers if name == b"x-forwarded-for"]
        if not forwarded:
            return peer
        host, port = self.trusted.get_trusted_client_address(b", ".join(forwarded).decode("latin-1"))
        return (host, port) if host else peer


class LaneProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, lane: Lane, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lane = lane

    def on_headers_complete(self) -> None:
        request = self._lane_request()
        if request is None:
            super().on_headers_complete()
            return
        # Stand in uvicorn's cycle slot (see the module docstring).
        self.cycle = request  # type: ignore[assignment]

    def _lane_request(self) -> LaneRequest | None:
        if self.parser.get_method() != b"POST" or self.root_path or self.parser.should_upgrade():
            return None
        if self.cycle is not None and not self.cycle.response_complete:
            return None  # pipelined behind a request still answering: uvicorn queues it
        if self.parser.get_http_version() != "1.1":
            return None  # no chunked answers to HTTP/1.0 clients: the ASGI path frames those
        if self.expect_100_continue:
            return None  # the front door answers 100 Continue only after the credential is checked
        path = PATHS.get(httptools.parse_url(self.url).path)
        services = self.lane.services
        if path is None or services is None:
            return None
        authorization = api_key = None
        length = -1
        for name, value in self.headers:
            # The first of repeated headers counts, as in Starlette (the front door).
            if name == b"authorization" and authorization is None:
                authorization = value.decode("latin-1")
            elif name == b"x-api-key" and api_key is None:
                api_key = value.decode("latin-1")
            elif name == b"content-length" and value.isdigit():
                length = int(value)
        if not 0 <= length <= MAX_BODY:
            return None  # chunked or too large: the ASGI path streams and refuses those (413)
        try:
            token = credential(authorization, api_key)
        except LlamaControllerError:
            return None  # malformed: the front door answers it
        # Only a token already verified (and cached) takes the lane: no body is buffered for a
        # caller who has not shown a valid credential. The front door verifies the others before
        # it reads a byte, and caches them for the next request.
        if token is None or not services.auth.is_cached(token):
            return None
        return LaneRequest(self, services, path, authorization, api_key)


class _Signal:
    """What uvicorn calls `message_event`: it is set when body arrives, the body ends or the
    client disconnects. The lane request reacts at once instead of waiting on an event."""

    __slots__ = ("request",)

    def __init__(self, request: LaneRequest) -> None:
        self.request = request

    def set(self) -> None:
        self.request.changed()


class LaneRequest:
    """One passthrough request on a lane connection, from its headers to its last byte."""

    def __init__(
        self, protocol: LaneProtocol, services: Services, path: str, authorization: str | None, api_key: str | None
    ) -> None:
        self.protocol = protocol
        self.services = services
        self.path = path
        self.authorization = authorization
        self.api_key = api_key
        self.headers = protocol.headers
        self.transport = protocol.transport
        # The attributes uvicorn's protocol reads and writes on its current cycle:
        self.body = bytearray()
        self.more_body = True
        self.message_event = _Signal(self)
        self.disconnected = False
        self.response_complete = False
        self.keep_alive = protocol.parser.should_keep_alive()
        # The answer:
        self.task: asyncio.Task[None] | None = None
        self.call: UpstreamCall | None = None
        self.head: bytes | None = None  # status line and headers, written with the first body bytes
        self.chunked = True
        self.remaining = 0  # bytes still owed under the answer's Content-Length
        self.started = False

    # ------------------------------------------------------------------- events from uvicorn

    def changed(self) -> None:
        if self.disconnected:
            if self.task is None:
                self.response_complete = True  # gone before the body ended: nothing to answer
            elif self.call is not None:
                self.call.client_left(self.task)
            else:
                self.task.cancel()
            return
        if len(self.body) > HIGH_WATER_LIMIT:
            self.protocol.flow.resume_reading()  # uvicorn paused it; Content-Length bounds the body
        if not self.more_body and self.task is None:
            self.task = asyncio.get_running_loop().create_task(self.run())
            self._own(self.task)

    def _own(self, task: asyncio.Task[None]) -> None:
        tasks = self.protocol.tasks  # uvicorn waits for these on shutdown
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    # --------------------------------------------------------------------------- the answer

    async def run(self) -> None:
        try:
            try:
                token = credential(self.authorization, self.api_key)  # raises if malformed
                assert token is not None, "_lane_request takes only requests with a credential"
                principal = await self.services.auth.verify(token)
                principal.require("inference")
                peer = self.protocol.client
                scope = {"path": self.path, "client": self.protocol.lane.client(peer, self.headers)}
                origin = Origin.from_headers(scope, self.headers)
                call = self.call = openai.proxy(origin, bytes(self.body), self.services, principal, self.path)
            except LlamaControllerError as exc:
                await self._respond(render(Dialect.OPENAI, exc))
                return
            await call.run(self.send, self)
        except Exception:
            log.exception("unhandled error on POST %s", self.path)
            if not self.started:
                await self._respond(
                    error_response(Dialect.OPENAI, 500, "internal error; see the controller log", "internal_error")
                )
            else:
                self.transport.close()
        finally:
            if not self.response_complete:
                self.response_complete = True
                self.transport.close()  # the answer was cut short: the client must not wait for more

    async def _respond(self, response: Response) -> None:
        await response({"type": "http"}, _no_receive, self.send)

    async def send(self, message: Message) -> None:
        """The ASGI send of the handler's response, framed as HTTP/1.1 and written to the socket."""
        if self.disconnected or self.response_complete:
            return
        if message["type"] == "http.response.start":
            self.head = self._head(message["status"], message.get("headers", []))
            return
        more = message.get("more_body", False)
        if not self.write_body(message.get("body", b"")) and more:
            await self.drain()
        if not more:
            tail = b"0\r\n\r\n" if self.chunked else b""
            if self.head is not None:  # an answer without a body
                tail, self.head, self.started = self.head + tail, None, True
            if tail:
                self.transport.write(tail)
            self._complete()

    def write_body(self, chunk: bytes) -> bool:
        """A piece of the body, written at once (UpstreamCall pipes a passthrough answer
        here without a task switch per piece). False when the client's buffer is full."""
        if self.disconnected or self.response_complete or not chunk:
            return True
        if self.chunked:
            out = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        elif len(chunk) > self.remaining:
            # More than the Content-Length promised (an in-band error after a cut-short answer):
            # the framing is lost, so the connection ends rather than confuse the next answer.
            self.keep_alive = False
            self.transport.close()
            return True
        else:
            out = chunk
            self.remaining -= len(chunk)
        if self.head is not None:
            out = self.head + out
            self.head = None
            self.started = True
        self.transport.write(out)
        return not self.protocol.flow.write_paused

    async def drain(self) -> None:
        if self.protocol.flow.write_paused and not self.disconnected:
            await self.protocol.flow.drain()

    def _head(self, status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
        parts = [STATUS_LINE[status]]
        if status < 200 or status in (204, 304):
            self.chunked = False  # answers without a body have no framing at all (RFC 9112 6.3)
        for name, value in (*self.protocol.server_state.default_headers, *headers):  # date, server
            if name == b"content-length":
                if status < 200 or status in (204, 304):
                    continue
                self.chunked = False
                self.remaining = int(value)
            parts += (name, b": ", value, b"\r\n")
        if self.chunked:
            parts.append(b"transfer-encoding: chunked\r\n")
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def _complete(self) -> None:
        self.response_complete = True
        if not self.chunked and self.remaining:
            self.keep_alive = False  # shorter than its Content-Length: only a close tells the client
        if not self.keep_alive:
            self.transport.close()
        self.protocol.on_response_complete()


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
