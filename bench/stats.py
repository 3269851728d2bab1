from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    low, high = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


@dataclass
class GenerationRun:
    concurrency: int
    requests: int
    tokens: int
    seconds: float
    ttft_p50_ms: float
    ttft_p99_ms: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    def as_dict(self) -> dict:
        return {**asdict(self), "tokens_per_s": round(self.tokens_per_s, 1)}


@dataclass
class EmbeddingRun:
    concurrency: int
    inputs_per_request: int
    requests: int
    seconds: float
    latency_p50_ms: float
    latency_p99_ms: float = float("nan")

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds

    @property
    def inputs_per_s(self) -> float:
        return self.requests * self.inputs_per_request / self.seconds

    def as_dict(self) -> dict:
        return {**asdict(self), "inputs_per_s": round(self.inputs_per_s, 1), "requests_per_s": round(self.requests_per_s, 1)}


async def closed_loop(
    concurrency: int, total: int, start: Callable[[int], Awaitable[tuple[float, int]]], stagger_s: float = 0.0
):
    """`concurrency` clients, each sending its next request as soon as its last one ends
    (vLLM benchmark_serving --max-concurrency). With `stagger_s`, client i starts i*stagger_s
    late, so arrivals spread out as in steady traffic instead of arriving as one burst (with
    equal output lengths, a burst would otherwise repeat itself every round).
    Returns ([(ttft_s, tokens)], seconds)."""
    queue = iter(range(total))
    results: list[tuple[float, int]] = []

    async def client(index: int) -> None:
        await asyncio.sleep(index * stagger_s)
        for i in queue:
            results.append(await start(i))

    started = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(concurrency)))
    return results, time.perf_counter() - started


def generation_run(concurrency: int, measured) -> GenerationRun:
    results, seconds = measured
    ttfts = [t for t, _ in results]
    return GenerationRun(
        concurrency, len(results), sum(n for _, n in results), seconds,
        percentile(ttfts, 0.5) * 1e3, percentile(ttfts, 0.99) * 1e3,
    )


def ratio(a: float, b: float) -> float:
    """a over b, to 3 places (what every bench table and results file shows)."""
    return round(a / b, 3) if b else float("nan")


def unused(path: Path) -> Path:
    """path, or path-2, path-3, ... if a run earlier that day wrote it (results are kept, not replaced)."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate
