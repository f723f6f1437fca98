"""The controller's upstream client vs aiohttp and httpx, head to head against one llama-server.

The design card named httpx. This measures the choice: each client, from one Python process on
uvloop (as in the controller), POSTs /tokenize at concurrency 16 for N seconds, and streams
32-token chat completions at concurrency 8, rounds interleaved. "pool" is the controller's own
client (llamacontroller/proxy/upstream.py).

Usage: python bench/upstream_clients.py [--rounds 3] [--seconds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import httpx
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llamacontroller.proxy.upstream import UpstreamPool
from tests.harness import SMOLLM2, bare_llama_server

TOKENIZE = json.dumps({"content": "The quick brown fox jumps over the lazy dog."}).encode()
CHAT = json.dumps(
    {
        "messages": [{"role": "user", "content": "Write about the sea."}],
        "max_tokens": 32,
        "ignore_eos": True,
        "stream": True,
    }
).encode()
HEADERS = {"Content-Type": "application/json"}
RAW_HEADERS = [(b"content-type", b"application/json")]


async def tokenize_pool(url: str, seconds: float) -> tuple[int, list[float]]:
    latencies: list[float] = []
    pool = UpstreamPool(url)
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            r = await pool.request(b"POST", "/tokenize", RAW_HEADERS, TOKENIZE, timeout=30)
            try:
                await r.read()
            finally:
                r.release()
            latencies.append(time.perf_counter() - began)

    await asyncio.gather(*(worker() for _ in range(16)))
    pool.close()
    return len(latencies), latencies


async def tokenize_aiohttp(url: str, seconds: float) -> tuple[int, list[float]]:
    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                async with session.post(url + "/tokenize", data=TOKENIZE, headers=HEADERS) as r:
                    await r.read()
                latencies.append(time.perf_counter() - began)

        await asyncio.gather(*(worker() for _ in range(16)))
    return len(latencies), latencies


async def tokenize_httpx(url: str, seconds: float) -> tuple[int, list[float]]:
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    async with httpx.AsyncClient(limits=limits) as client:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                r = await client.post(url + "/tokenize", content=TOKENIZE, headers=HEADERS)
                r.read()
                latencies.append(time.perf_counter() - began)

        await asyncio.gather(*(worker() for _ in range(16)))
    return len(latencies), latencies


async def stream_aiohttp(url: str, requests: int) -> int:
    chunks = 0
    async with aiohttp.ClientSession() as session:

        async def one() -> None:
            nonlocal chunks
            async with session.post(
                url + "/v1/chat/completions", data=CHAT, headers={**HEADERS, "Connection": "close"}
            ) as r:
                async for _ in r.content.iter_any():
                    chunks += 1

        for start in range(0, requests, 8):
            await asyncio.gather(*(one() for _ in range(min(8, requests - start))))
    return chunks


async def stream_pool(url: str, requests: int) -> int:
    chunks = 0
    pool = UpstreamPool(url)

    async def one() -> None:
        nonlocal chunks
        headers = [*RAW_HEADERS, (b"connection", b"close")]
        r = await pool.request(b"POST", "/v1/chat/completions", headers, CHAT, timeout=120)
        try:
            async for _ in r.chunks():
                chunks += 1
        finally:
            r.release()

    for start in range(0, requests, 8):
        await asyncio.gather(*(one() for _ in range(min(8, requests - start))))
    return chunks


async def stream_httpx(url: str, requests: int) -> int:
    chunks = 0
    async with httpx.AsyncClient(timeout=120) as client:

        async def one() -> None:
            nonlocal chunks
            async with client.stream(
                "POST", url + "/v1/chat/completions", content=CHAT, headers={**HEADERS, "Connection": "close"}
            ) as r:
                async for _ in r.aiter_raw():
                    chunks += 1

        for start in range(0, requests, 8):
            await asyncio.gather(*(one() for _ in range(min(8, requests - start))))
    return chunks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    results: dict[str, dict[str, list[float]]] = {
        c: {"rps": [], "lat": [], "tps": []} for c in ("pool", "aiohttp", "httpx")
    }
    with bare_llama_server(SMOLLM2) as url:
        for _ in range(args.rounds):
            for name, tok, stream in (
                ("pool", tokenize_pool, stream_pool),
                ("aiohttp", tokenize_aiohttp, stream_aiohttp),
                ("httpx", tokenize_httpx, stream_httpx),
            ):
                count, latencies = uvloop.run(tok(url, args.seconds))
                results[name]["rps"].append(count / args.seconds)
                results[name]["lat"].extend(latencies)
                began = time.perf_counter()
                chunks = uvloop.run(stream(url, 16))
                results[name]["tps"].append(chunks / (time.perf_counter() - began))
    print(f"\nupstream client: {args.rounds} interleaved rounds against one llama-server\n")
    print("| client | /tokenize c=16 req/s | p50 ms | p99 ms | stream c=8 chunks/s |")
    print("|---|---:|---:|---:|---:|")
    for name, r in results.items():
        lat = sorted(r["lat"])
        print(
            f"| {name} | {statistics.mean(r['rps']):,.0f} | {statistics.median(lat) * 1000:.2f} | "
            f"{lat[int(len(lat) * 0.99)] * 1000:.2f} | {statistics.mean(r['tps']):,.1f} |"
        )


if __name__ == "__main__":
    main()
