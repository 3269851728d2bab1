"""The chat loads every chat server of `make bench` gets, hfserve's server phase and vLLM alike:
a warm-up, then c=1 and c=16 with staggered starts and a burst of 16 (http_load.chat_run),
`rounds` requests per client each.

The warm-up runs each of those loads once, unmeasured, before the first measured request, so
that every batch size the measured rounds reach has run once: vLLM-CPU compiles its model for
each new batch size on first use, which one wave of requests per load left inside its measured
rounds. Both servers get the same warm-up, so neither is measured colder than the other.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from . import http_load
from .stats import GenerationRun

LOADS = ((1, True), (16, True), (16, False))  # (clients, staggered starts); the last is the burst
WARMUP_ROUNDS = 1  # requests per client in each load's warm-up pass, after chat_run's own first wave


@dataclass
class ChatLoads:
    chat: dict[int, GenerationRun]  # c=1 and c=16, staggered starts
    burst: GenerationRun  # 16 arriving at once


def warmup_plan(rounds: int = WARMUP_ROUNDS) -> list[dict]:
    """What the warm-up sends, for the results: per load, chat_run's first wave (one request per
    client) and `rounds` more per client."""
    return [{"concurrency": c, "arrivals": "staggered" if steady else "at once", "requests": c * (1 + rounds)}
            for c, steady in LOADS]


def run(base: str, rounds: int, headers: dict | None = None, warmup_rounds: int = WARMUP_ROUNDS) -> ChatLoads:
    """The warm-up (every load once), then every load measured, in LOADS' order."""
    for concurrency, steady in LOADS:
        asyncio.run(http_load.chat_run(base, concurrency, warmup_rounds, steady=steady, headers=headers))
    measured = [asyncio.run(http_load.chat_run(base, concurrency, rounds, steady=steady, headers=headers))
                for concurrency, steady in LOADS]
    return ChatLoads({1: measured[0], 16: measured[1]}, measured[2])
