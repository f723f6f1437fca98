"""An upstream that speaks only the OpenAI /v1 dialect: forwards /v1/* to a real llama-server,
answers 404 to anything else (/completion, /tokenize, /props ...) and records every path asked.

Run: python tests/openai_only.py TARGET_URL PORT PATH_LOG
"""

from __future__ import annotations

import sys

import aiohttp
from aiohttp import web


def main(target: str, port: int, path_log: str) -> None:
    async def forward(request: web.Request) -> web.StreamResponse:
        with open(path_log, "a") as log:
            log.write(f"{request.method} {request.path}\n")
        if not request.path.startswith("/v1/"):
            return web.json_response({"error": {"message": "not an OpenAI route", "code": 404}}, status=404)
        session: aiohttp.ClientSession = request.app["session"]
        async with session.request(
            request.method,
            target + request.path,
            data=await request.read(),
            headers={"Content-Type": "application/json"},
        ) as upstream:
            response = web.StreamResponse(
                status=upstream.status, headers={"Content-Type": upstream.headers.get("Content-Type", "")}
            )
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        # A new connection per request: llama-server closes connections after streams while
        # advertising keep-alive (the controller handles that; this helper need not).
        app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        yield
        await app["session"].close()

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
