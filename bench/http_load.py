"""A small async load generator for the OpenAI endpoints (httpx, SSE parsed by hand)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time

import httpx
import numpy as np

from .stats import EmbeddingRun, GenerationRun, closed_loop, generation_run, percentile
from .workload import CHAT_MODEL, EMBED_MODEL, NEW_TOKENS, chat_messages, sentences

CONTENT_MARK = re.compile(rb'"content":"[^"]')


async def _stream_chat(client: httpx.AsyncClient, i: int) -> tuple[float, int]:
    """One streamed chat request: (time to first content, completion tokens).

    Parses only what it needs (a cheap client leaves the cores to the server): the first
    content chunk is spotted by its bytes, and usage is read from the final chunk.
    """
    body = {
        "model": CHAT_MODEL, "messages": chat_messages(i), "max_tokens": NEW_TOKENS, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first, tail = None, b""
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for data in response.aiter_bytes():
            if first is None and CONTENT_MARK.search(data):
                first = time.perf_counter() - started
            tail = (tail + data)[-4096:]
    usage_line = next(line for line in reversed(tail.split(b"\n\n")) if b'"usage":{' in line)
    tokens = json.loads(usage_line.removeprefix(b"data: "))["usage"]["completion_tokens"]
    return first or 0.0, tokens


async def chat_run(base_url: str, concurrency: int, rounds: int, steady: bool = True) -> GenerationRun:
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=limits) as client:
        warm = time.perf_counter()
        await asyncio.gather(*(_stream_chat(client, i) for i in range(concurrency)))  # warm-up
        stagger = (time.perf_counter() - warm) / concurrency if steady else 0.0
        measured = await closed_loop(concurrency, rounds * concurrency, lambda i: _stream_chat(client, i % 64), stagger)
    return generation_run(concurrency, measured)


async def embedding_run(
    base_url: str, concurrency: int, inputs_per_request: int, seconds: float, encoding_format: str = "base64"
) -> EmbeddingRun:
    """base64 by default: it is what the official openai client requests (and decodes with
    numpy) unless the caller asks for floats."""
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    latencies: list[float] = []
    counter = iter(range(10**9))
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as client:

        async def worker(i: int, until: float | None) -> None:
            while True:
                t = time.perf_counter()
                response = await client.post(
                    "/v1/embeddings",
                    json={
                        "model": EMBED_MODEL,
                        "input": sentences(inputs_per_request, offset=next(counter) * inputs_per_request),
                        "encoding_format": encoding_format,
                    },
                )
                response.raise_for_status()
                data = response.json()["data"]
                if encoding_format == "base64":
                    [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data]
                if until is None:
                    return
                latencies.append(time.perf_counter() - t)
                if t > until:
                    return

        await asyncio.gather(*(worker(i, None) for i in range(concurrency)))  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(worker(i, started + seconds) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    return EmbeddingRun(concurrency, inputs_per_request, len(latencies), elapsed, percentile(latencies, 0.5) * 1e3)
