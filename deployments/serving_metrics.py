"""The serving metrics a model replica records (observability/catalogue.py): time to first
token, inter-token latency and token counts per request; the engine's batch sizes, running
and waiting sequences and KV-cache use; requests in flight; load time and loaded replicas.

Per-token work is kept to one histogram observation per text event (an event may carry
several tokens: the stream interval), which is what keeps metrics within their budget on a
small machine (bench/: metrics on and off in one run).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from contract.model_api import EngineStats
from observability import catalogue
from observability.recorder import Recorder

E = TypeVar("E")


class GenerationMeter:
    """One generation request: its first token (TTFT, from its arrival at this replica), the
    gaps between tokens of each of its sequences, and its tokens when it ends."""

    def __init__(self, metrics: Recorder, model: str, prompt_tokens: int, clock: Callable[[], float] = time.monotonic):
        self._metrics, self._model, self._clock = metrics, model, clock
        self._prompt_tokens = prompt_tokens
        self._started = clock()
        self._first_seen = False
        self._last: dict[int, tuple[float, int]] = {}  # sequence -> (time, tokens so far)

    def event(self, sequence: int, tokens_so_far: int) -> None:
        now = self._clock()
        if not self._first_seen and tokens_so_far > 0:
            self._first_seen = True
            self._metrics.observe(catalogue.TIME_TO_FIRST_TOKEN, now - self._started, model=self._model)
        previous = self._last.get(sequence)
        if previous is not None and tokens_so_far > previous[1]:
            per_token = (now - previous[0]) / (tokens_so_far - previous[1])
            self._metrics.observe(catalogue.INTER_TOKEN_LATENCY, per_token, model=self._model)
        if tokens_so_far > 0:
            self._last[sequence] = (now, tokens_so_far)

    def finish(self) -> None:
        self._metrics.inc(catalogue.PROMPT_TOKENS, self._prompt_tokens, model=self._model)
        self._metrics.inc(catalogue.GENERATION_TOKENS, sum(tokens for _, tokens in self._last.values()), model=self._model)


async def metered(events: AsyncIterator[tuple[Any, E]], meter: GenerationMeter,
                  tokens_of: Callable[[E], int]) -> AsyncIterator[tuple[Any, E]]:
    """`events` ((choice, event) pairs) passed through `meter`; closing this closes `events`
    (which cancels the sequences in the engine)."""
    try:
        async for choice, event in events:
            meter.event(choice.index, tokens_of(event))
            yield choice, event
    finally:
        meter.finish()
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()


class ReplicaMeter:
    """What a replica records about itself: load time, loaded, in-flight requests and the
    engine's gauges (sampled on every health check: Ray exports every 10 s anyway)."""

    def __init__(self, metrics: Recorder, model: str):
        self.metrics, self.model = metrics, model
        self.active = 0

    def loaded(self, seconds: float) -> None:
        self.metrics.observe(catalogue.MODEL_LOAD_DURATION, seconds, model=self.model)
        self.metrics.set(catalogue.MODELS_LOADED, 1, model=self.model)

    def unloaded(self) -> None:
        self.metrics.set(catalogue.MODELS_LOADED, 0, model=self.model)
        self.metrics.set(catalogue.ACTIVE_REQUESTS, 0, model=self.model)

    def started(self) -> None:
        self.active += 1
        self.metrics.set(catalogue.ACTIVE_REQUESTS, self.active, model=self.model)

    def ended(self) -> None:
        self.active -= 1
        self.metrics.set(catalogue.ACTIVE_REQUESTS, self.active, model=self.model)

    def engine(self, stats: EngineStats) -> None:
        """Every gauge again, with the engine's counters: called every gauge_refresh_s(), as
        Ray evicts a gauge not set again within two report intervals."""
        self.metrics.set(catalogue.MODELS_LOADED, 1, model=self.model)
        self.metrics.set(catalogue.ACTIVE_REQUESTS, self.active, model=self.model)
        self.metrics.set(catalogue.ENGINE_RUNNING, stats.running_requests, model=self.model)
        self.metrics.set(catalogue.ENGINE_WAITING, stats.waiting_requests, model=self.model)
        if stats.kv_cache_usage is not None:
            self.metrics.set(catalogue.KV_CACHE_USAGE, stats.kv_cache_usage, model=self.model)

    def batch_observer(self, kind: str) -> Callable[[int], None]:
        """For an engine's step loop or a @serve.batch function: the size of each batch."""
        if kind not in catalogue.BATCH_KINDS:
            raise ValueError(f"unknown batch kind {kind!r}")
        return lambda size: self.metrics.observe(catalogue.BATCH_SIZE, size, model=self.model, kind=kind)
