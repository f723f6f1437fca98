"""The proxy's upstream client against a tiny server of our own, for the behaviours a real engine
shows only now and then: closing a keep-alive connection, an answer without a length, silence."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from llamacontroller.proxy.upstream import HIGH_WATER, UpstreamPool

Handler = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]  # returns: keep the connection


class Server:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                body = await reader.readexactly(length)
                if not await self.handler(body, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client went, or the test is over
        finally:
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


@contextlib.asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[Server]:
    server = Server(handler)
    server.server = await asyncio.start_server(server._serve, "127.0.0.1", 0)
    async with server.server:
        yield server


async def echo(body: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    await writer.drain()
    return True


async def post(pool: UpstreamPool, body: bytes, timeout: float = 5) -> tuple[int, bytes]:
    response = await pool.request(b"POST", "/x", [(b"content-type", b"application/json")], body, timeout=timeout)
    try:
        return response.status, await response.read()
    finally:
        response.release()


async def test_keep_alive_connections_are_reused() -> None:
    async with serve(echo) as server:
        pool = UpstreamPool(server.url)
        assert [await post(pool, b"%d" % i) for i in range(3)] == [(200, b"0"), (200, b"1"), (200, b"2")]
        assert server.connections == 1
        pool.close()


async def test_a_connection_the_engine_closed_is_not_reused() -> None:
    async def close_after(body: bytes, writer: asyncio.StreamWriter) -> bool:
        await echo(body, writer)
        return False  # like llama-server after a stream: "keep-alive" said, connection closed

    async with serve(close_after) as server:
        pool = UpstreamPool(server.url)
        assert await post(pool, b"a") == (200, b"a")
        await asyncio.sleep(0.05)  # the close arrives while the connection sits in the pool
        assert await post(pool, b"b") == (200, b"b")
        assert server.connections == 2
        pool.close()


async def test_an_answer_without_length_ends_with_the_connection() -> None:
    async def until_eof(body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nno length here")
        await writer.drain()
        return False

    async with serve(until_eof) as server:
        pool = UpstreamPool(server.url)
        assert await post(pool, b"x") == (200, b"no length here")
        assert await post(pool, b"x") == (200, b"no length here")  # on a new connection
        assert server.connections == 2


async def test_silence_is_a_timeout() -> None:
    async def silent(body: bytes, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(5)
        return False

    async with serve(silent) as server:
        pool = UpstreamPool(server.url)
        with pytest.raises(TimeoutError):
            await post(pool, b"x", timeout=0.2)


async def test_a_slow_reader_pauses_the_engine_and_gets_every_byte_then_reuses_the_connection() -> None:
    # More than HIGH_WATER arrives before the reader takes any: reading from the engine pauses,
    # resumes when the reader catches up, and the connection is fine for the next request.
    big = bytes(range(256)) * (3 * HIGH_WATER // 256)

    async def bulk(body: bytes, writer: asyncio.StreamWriter) -> bool:
        payload = big if body == b"big" else body
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload))
        writer.write(payload)
        await writer.drain()
        return True

    async with serve(bulk) as server:
        pool = UpstreamPool(server.url)
        response = await pool.request(b"POST", "/x", [], b"big", timeout=5)
        received = bytearray()
        try:
            await asyncio.sleep(0.05)  # the engine's bytes pile up to the high-water mark
            async for chunk in response.chunks():
                received += chunk
                await asyncio.sleep(0.001)
        finally:
            response.release()
        assert bytes(received) == big
        assert await post(pool, b"second") == (200, b"second")
        assert server.connections == 1
