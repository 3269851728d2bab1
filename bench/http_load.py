"""A small async load generator for the OpenAI endpoints (SSE parsed by hand).

The throughput runs use aiohttp (as vLLM's benchmark_serving does): the client shares the
machine's cores with the server it measures, and httpx's per-request CPU was large enough to
be the bottleneck. On 2 cores, single-input embeddings at c=32 against the same server:
httpx 186-195 req/s with p99 560-664 ms, aiohttp 253-259 req/s with p99 209-237 ms, while
HAProxy's own log put every request's time inside the server at 319 ms or less (2026-11-29,
docs/performance.md). The sequential latency probes (c=1) keep httpx.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time

import aiohttp
import httpx
import numpy as np

from .stats import EmbeddingRun, GenerationRun, closed_loop, generation_run, percentile
from .workload import CHAT_MODEL, EMBED_MODEL, NEW_TOKENS, chat_messages, sentences

CONTENT_MARK = re.compile(rb'"content":"[^"]')


# Throughput runs measure the engine path: they skip the response cache (the same prompts
# repeat), exactly as a client sending Cache-Control: no-cache would.
NO_CACHE = {"Cache-Control": "no-cache"}


def _session(base_url: str, concurrency: int, headers: dict | None) -> aiohttp.ClientSession:
    """A keep-alive connection per client and a few spare, as a steady load would hold."""
    return aiohttp.ClientSession(base_url=base_url, headers=headers, timeout=aiohttp.ClientTimeout(total=300),
                                 connector=aiohttp.TCPConnector(limit=concurrency + 4))


async def _stream_chat(client: aiohttp.ClientSession, i: int, extra: dict | None = None) -> tuple[float, int]:
    """One streamed chat request: (time to first content, completion tokens).

    Parses only what it needs (a cheap client leaves the cores to the server): the first
    content chunk is spotted by its bytes, and usage is read from the final chunk.
    """
    body = {
        "model": CHAT_MODEL, "messages": chat_messages(i), "max_tokens": NEW_TOKENS, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True}, **(extra or {}),
    }
    started = time.perf_counter()
    first, tail = None, b""
    async with client.post("/v1/chat/completions", json=body, headers=NO_CACHE) as response:
        response.raise_for_status()
        async for data in response.content.iter_any():
            if first is None and CONTENT_MARK.search(data):
                first = time.perf_counter() - started
            tail = (tail + data)[-4096:]
    usage_line = next(line for line in reversed(tail.split(b"\n\n")) if b'"usage":{' in line)
    tokens = json.loads(usage_line.removeprefix(b"data: "))["usage"]["completion_tokens"]
    return first or 0.0, tokens


async def chat_run(base_url: str, concurrency: int, rounds: int, steady: bool = True, headers: dict | None = None,
                   extra: dict | None = None) -> GenerationRun:
    """Streamed chats in a closed loop; `extra`: more body fields for every request."""
    async with _session(base_url, concurrency, headers) as client:
        warm = time.perf_counter()
        await asyncio.gather(*(_stream_chat(client, i, extra) for i in range(concurrency)))  # warm-up
        stagger = (time.perf_counter() - warm) / concurrency if steady else 0.0
        measured = await closed_loop(concurrency, rounds * concurrency, lambda i: _stream_chat(client, i % 64, extra),
                                     stagger)
    return generation_run(concurrency, measured)


async def embedding_run(
    base_url: str, concurrency: int, inputs_per_request: int, seconds: float, encoding_format: str = "base64",
    headers: dict | None = None,
    timeline: list[tuple[float, float]] | None = None,
) -> EmbeddingRun:
    """base64 by default: it is what the official openai client requests (and decodes with
    numpy) unless the caller asks for floats."""
    latencies: list[float] = []
    counter = iter(range(10**9))
    async with _session(base_url, concurrency, {**(headers or {}), **NO_CACHE}) as client:

        async def worker(i: int, until: float | None) -> None:
            while True:
                t = time.perf_counter()
                async with client.post(
                    "/v1/embeddings",
                    json={
                        "model": EMBED_MODEL,
                        "input": sentences(inputs_per_request, offset=next(counter) * inputs_per_request),
                        "encoding_format": encoding_format,
                    },
                ) as response:
                    response.raise_for_status()
                    data = (await response.json())["data"]
                if encoding_format == "base64":
                    [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data]
                if until is None:
                    return
                latencies.append(time.perf_counter() - t)
                if timeline is not None:  # (sent, seconds): when the slow ones were sent
                    timeline.append((t, latencies[-1]))
                if t > until:
                    return

        await asyncio.gather(*(worker(i, None) for i in range(concurrency)))  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(worker(i, started + seconds) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    return EmbeddingRun(concurrency, inputs_per_request, len(latencies), elapsed,
                        percentile(latencies, 0.5) * 1e3, percentile(latencies, 0.99) * 1e3)


async def paired_latency_p50(a: tuple, b: tuple, requests: int) -> tuple[float, float]:
    """p50s in ms of two kinds of request, each (base_url, headers, send), sent alternately
    to the same server, so that the machine's noise falls on both alike."""
    async with httpx.AsyncClient(base_url=a[0], timeout=60, headers=a[1]) as client_a, \
            httpx.AsyncClient(base_url=b[0], timeout=60, headers=b[1]) as client_b:
        sides = {"a": (client_a, a[2]), "b": (client_b, b[2])}
        for i in range(5):  # warm-up
            for client, send in sides.values():
                await send(client, -1 - i)
        times: dict[str, list[float]] = {"a": [], "b": []}
        for i in range(requests):
            for name in ("a", "b") if i % 2 else ("b", "a"):
                client, send = sides[name]
                started = time.perf_counter()
                response = await send(client, i)
                times[name].append(time.perf_counter() - started)
                response.raise_for_status()
    return percentile(times["a"], 0.5) * 1e3, percentile(times["b"], 0.5) * 1e3


async def latency_p50(base_url: str, requests: int, send, headers: dict | None = None) -> float:
    """p50 in ms of `requests` sequential calls of `send(client, i)` (concurrency 1)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=60, headers=headers) as client:
        for i in range(5):  # warm-up
            await send(client, -1 - i)
        times = []
        for i in range(requests):
            started = time.perf_counter()
            response = await send(client, i)
            times.append(time.perf_counter() - started)
            response.raise_for_status()
    return percentile(times, 0.5) * 1e3


async def embed_unique(client: httpx.AsyncClient, i: int):
    """A cache miss every time: a new single input (the gateway's full path, then the model)."""
    return await client.post("/v1/embeddings", json={"model": EMBED_MODEL, "input": f"unique input number {i} {time.time()}"})


async def chat_cached(client: httpx.AsyncClient, i: int):
    """The same deterministic request every time: after the first, a cache hit."""
    return await client.post("/v1/chat/completions", json={
        "model": CHAT_MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16, "temperature": 0,
    })


async def health(client: httpx.AsyncClient, i: int):
    """A GET no-op through the same proxy and ingress (no request body to fetch)."""
    return await client.get("/health")


async def rejected_post(client: httpx.AsyncClient, i: int):
    """A POST no-op through the same route as chat: authenticated, body read and validated,
    then refused (n=0) before any model, cache or breaker work. Ray Serve fetches a POST's
    body from the proxy in a second round trip, so this is the floor for a chat request."""
    response = await client.post("/v1/chat/completions", json={
        "model": CHAT_MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16, "temperature": 0, "n": 0,
    })
    if response.status_code != 400:
        response.raise_for_status()
    return httpx.Response(200, request=response.request)
