"""A stand-in llama-server for the supervisor's property test: takes llama-server's flags,
answers /health and the inference paths at once, and lives as long as it is let. Fast to start
(no model), so a test can load and kill hundreds of them."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

from aiohttp import web

ANSWER = {
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def answer(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response(ANSWER)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args, _ = parser.parse_known_args()  # -m, -c, --alias, --metrics, ... as llama-server takes them
    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_post("/v1/chat/completions", answer)
    app.router.add_post("/v1/completions", answer)
    app.router.add_get("/metrics", lambda request: web.Response(text=""))
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    web.run_app(app, host=args.host, port=args.port, print=None, handle_signals=False)


if __name__ == "__main__":
    asyncio.set_event_loop(asyncio.new_event_loop())
    main()
