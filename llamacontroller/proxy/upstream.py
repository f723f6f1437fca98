"""The proxy's HTTP/1.1 client to one engine: pooled keep-alive connections, bytes in, bytes out.

Why not aiohttp (kept for health checks and everything else): per proxied request it builds URL
objects, multidicts, timeouts, cookie and trace machinery a relay to a local engine never uses.
bench/upstream_clients.py measures this client against aiohttp and httpx on one llama-server;
docs/benchmarks.md has the numbers. What this client does, and nothing more:
- one request at a time per connection (no pipelining), `Content-Length` request bodies;
- responses framed by `Content-Length`, chunked encoding (httptools removes the framing) or the
  end of the connection;
- a read timeout between body chunks, back-pressure (reading pauses while the caller lags);
- a pooled connection the engine closed is dropped as soon as the close arrives, and idle ones
  expire before llama-server's own keep-alive does; a request is never sent twice (one that
  failed before the answer's head may still have reached the engine and generated);
- interim 1xx answers are skipped, not taken for the answer;
- a connect timeout; headers of the pool's own (the engine's per-launch API key) on every request.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import cast
from urllib.parse import urlsplit

import httptools

# Reading from the engine pauses while this much of its answer waits for the client.
HIGH_WATER = 1 << 20
# llama-server keeps an idle connection 5 s; one reused at that very moment breaks. Stay below it.
IDLE_SECONDS = 4.0
MAX_IDLE = 256
CONNECT_TIMEOUT = 10.0


class UpstreamClosed(ConnectionError):
    """The engine closed the connection before the answer was complete."""


class UpstreamProtocolError(ConnectionError):
    """The engine's answer was not valid HTTP/1.x."""


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and the response being read from it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.last_data = 0.0  # loop time of the last bytes from the engine
        self.parser: httptools.HttpResponseParser | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.keep_alive = False
        self.complete = False
        self.until_eof = False
        self.error: BaseException | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None

    def begin(self, data: bytes) -> None:
        assert self.transport is not None
        self.resume()  # a pooled connection may have been paused by the last answer's reader
        self._reset()
        self.parser = httptools.HttpResponseParser(self)
        self.transport.write(data)

    # -------------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.last_data = self.loop.time()
        if self.parser is None:  # bytes while idle: not HTTP we asked for; never reuse this one
            self.abort()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamProtocolError(f"invalid HTTP from the engine: {exc}"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.parser is None or self.complete:
            return
        if self.head_done and self.until_eof and exc is None:
            self.complete = True  # the answer had no length: the close is its end
            self._wake()
        else:
            self._fail(UpstreamClosed("the engine closed the connection" + (f": {exc}" if exc else "")))

    # ------------------------------------------------------------------ httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self.status = self.parser.get_status_code()
        if self.status < 200:
            self.headers = []  # an interim answer (100 Continue, 103 Early Hints): the real one follows
            return
        names = {name for name, _ in self.headers}
        self.until_eof = b"content-length" not in names and b"transfer-encoding" not in names
        # Asked here: after the message is complete, llhttp no longer says. An event stream is
        # never reused: llama-server closes the connection after one whatever its headers say,
        # and a request sent on it as the close arrives cannot be sent again (it may have run).
        is_sse = any(n == b"content-type" and v.startswith(b"text/event-stream") for n, v in self.headers)
        self.keep_alive = self.parser.should_keep_alive() and not self.until_eof and not is_sse
        self.head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER:
            self._pause()
        self._wake()

    def on_message_complete(self) -> None:
        if self.status < 200:
            self.status = 0
            return
        self.complete = True
        self._wake()

    # ---------------------------------------------------------------------------- helpers

    def _pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
            self._wake()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self._wake()

    async def wait(self, timeout: float) -> None:
        """Until something arrives (head, body, end or error); TimeoutError after `timeout` of
        silence from the engine (the clock is `last_data`)."""
        waiter = self.waiter = self.loop.create_future()
        self.last_data = self.loop.time()  # silence is counted from now, or from later bytes
        self._timer = self.loop.call_later(timeout, self._check_silence, waiter, timeout)
        try:
            await waiter
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.waiter = None

    def _check_silence(self, waiter: asyncio.Future[None], timeout: float) -> None:
        quiet = self.loop.time() - self.last_data
        if waiter.done():
            return
        if quiet >= timeout:
            waiter.set_exception(TimeoutError())
        else:  # bytes came meanwhile: the silence started later than this timer
            self._timer = self.loop.call_later(timeout - quiet, self._check_silence, waiter, timeout)

    def take(self) -> bytes:
        chunks = self.chunks
        chunk = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        self.resume()
        return chunk

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class Response:
    """The engine's answer. Read it with `chunks()` or `read()`; `release()` exactly once (in a finally)."""

    __slots__ = ("_conn", "_pool", "_released", "_timeout", "headers", "status")

    def __init__(self, conn: _Connection, pool: UpstreamPool, timeout: float) -> None:
        self._conn = conn
        self._pool = pool
        self._timeout = timeout
        self._released = False
        self.status = conn.status
        self.headers = conn.headers

    def header(self, name: bytes) -> bytes:
        for key, value in self.headers:
            if key == name:
                return value
        return b""

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as the engine sends it: whatever has arrived, each time the caller asks."""
        conn = self._conn
        while True:
            if conn.chunks:
                yield conn.take()
            elif conn.complete:
                return
            elif conn.error is not None:
                raise conn.error
            else:
                await conn.wait(self._timeout)

    @property
    def at_end(self) -> bool:
        """Everything the engine sent has been taken."""
        return self._conn.complete and not self._conn.chunks

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    def release(self) -> None:
        """Back to the pool if the answer was read to its end, else closed (which makes
        llama-server stop generating it)."""
        if self._released:
            return
        self._released = True
        if self._conn.reusable:
            self._pool._put(self._conn)
        else:
            self._conn.abort()


class UpstreamPool:
    """Keep-alive connections to one engine's base URL (http or https, with an optional path prefix)."""

    def __init__(
        self, base_url: str, headers: list[tuple[bytes, bytes]] | None = None, connect_timeout: float = CONNECT_TIMEOUT
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if parts.scheme == "https" else None
        self.prefix = parts.path.rstrip("/").encode()
        default_port = self.port == (443 if self.ssl else 80)
        self.host_header = (parts.hostname if default_port else f"{parts.hostname}:{self.port}").encode("idna")
        self._idle: list[_Connection] = []
        self.headers = headers or []
        self.connect_timeout = connect_timeout

    async def request(
        self, method: bytes, path: str, headers: list[tuple[bytes, bytes]], body: bytes, *, timeout: float
    ) -> Response:
        """Send one request and wait for the head of its answer (status and headers)."""
        lines = [method, b" ", self.prefix, path.encode(), b" HTTP/1.1\r\nhost: ", self.host_header]
        lines.append(b"\r\ncontent-length: %d\r\n" % len(body))
        for name, value in (*self.headers, *headers):
            lines += (name, b": ", value, b"\r\n")
        lines += (b"\r\n", body)
        data = b"".join(lines)
        # Never sent twice: a POST the engine closed on before its head may have been generated.
        conn = self._take() or await self._connect()
        return await self._exchange(conn, data, timeout)

    async def _exchange(self, conn: _Connection, data: bytes, timeout: float) -> Response:
        try:
            conn.begin(data)
            while not conn.head_done:
                if conn.error is not None:
                    raise conn.error
                await conn.wait(timeout)
        except BaseException:
            conn.abort()
            raise
        return Response(conn, self, timeout)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                )
        except TimeoutError:
            where = f"{self.host}:{self.port}"
            raise ConnectionError(f"no connection to {where} within {self.connect_timeout:.0f}s") from None
        return conn

    def _take(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_SECONDS:
                return conn
            conn.abort()
        return None

    def _put(self, conn: _Connection) -> None:
        conn.parser = None
        conn.idle_since = time.monotonic()
        if self._idle and self._idle[0].closed:  # closed by the engine while idle
            self._idle = [c for c in self._idle if not c.closed]
        if len(self._idle) >= MAX_IDLE:
            self._idle.pop(0).abort()
        self._idle.append(conn)

    def close(self) -> None:
        """Close the idle connections (the engine is going away)."""
        while self._idle:
            self._idle.pop().abort()
