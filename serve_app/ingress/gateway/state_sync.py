"""Keeping the replica's copies of the shared state fresh: one call to the state actor every
250 ms while requests flow (once a second when idle) brings the breaker states, the cache's key
changes and the run-time model records, and gives a restarted actor this deployment's
settings; quota returns, cache stores and usage are flushed in batches on their own periods.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from serve_app.ingress.gateway.breaker_gate import Breakers
from serve_app.ingress.gateway.cache_client import CacheClient
from serve_app.ingress.gateway.quota import Quota
from serve_app.ingress.gateway.usage import UsageRecorder
from serve_app.ingress.model_directory import ModelDirectory
from serve_app.state.client import StateClient, StateUnavailable
from serve_app.state.core import StateSettings

logger = logging.getLogger("ray.serve")

STOP_WAIT_S = 2.0


class StateSync:
    def __init__(self, state: StateClient, settings: StateSettings, directory: ModelDirectory, breakers: Breakers,
                 cache: CacheClient, quota: Quota, usage: UsageRecorder):
        self._state = state
        self._settings = settings
        self._directory = directory
        self._breakers = breakers
        self._cache = cache
        self._quota = quota
        self._usage = usage
        self._background: list[asyncio.Task] = []
        self._stopping = False
        self._last_request = float("-inf")
        self._state_started: float | None = None
        self._models_used: dict[str, float] = {}  # when this replica last sent each model a request, since the last sync

    def requested(self) -> None:
        """A request arrived: sync often while they flow."""
        self._last_request = time.monotonic()

    def used(self, model: str, at: float) -> None:
        """This replica sent `model` a request at `at` (wall time): the LRU order of run-time models."""
        self._models_used[model] = at

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._background = [
            loop.create_task(self._every(self._sync_period, self.sync)),
            loop.create_task(self._every(0.25, self._quota.flush)),
            loop.create_task(self._every(0.25, self._cache.flush)),
            loop.create_task(self._every(1.0, self._usage.flush)),
        ]

    async def stop(self) -> None:
        self._stopping = True
        for task in self._background:
            task.cancel()
        # Bounded: Python 3.11's wait_for can swallow a cancellation that lands as its inner
        # call completes, and a job that misses its cancel must not hang the shutdown.
        if self._background:
            await asyncio.wait(self._background, timeout=STOP_WAIT_S)
        for flush in (self._quota.flush, self._cache.flush, self._usage.flush):
            with contextlib.suppress(Exception):
                await flush()

    async def sync(self) -> None:
        """Breaker states and the cache's key changes, in one call to the state actor."""
        used, self._models_used = self._models_used, {}
        try:
            result = await self._state.sync(self._cache.version, *self._cache.take_local_counts(),
                                            self._directory.runtime_version, used, timeout_s=0.5)
        except StateUnavailable:
            for model, at in used.items():  # sent with the next sync instead
                self._models_used[model] = max(at, self._models_used.get(model, 0.0))
            return
        self._breakers.replace_all(result["breakers"])
        self._cache.apply(result["cache"])
        if "models" in result:
            models = result["models"]
            self._directory.set_runtime(models["version"], models["records"], models.get("aliases"))
        if result.get("started") != self._state_started:
            # The state actor outlives deploys, and a restart re-creates it with the settings it
            # was first created with: give it this deployment's settings, so a redeploy's new
            # cache or breaker settings take effect instead of being silently ignored.
            with contextlib.suppress(StateUnavailable):  # retried on the next sync
                await self._state.configure(self._settings, timeout_s=2.0)
                self._state_started = result.get("started")

    def _sync_period(self) -> float:
        # 250 ms while requests flow (breakers and cache keys stay fresh); once a second when
        # idle, so an idle server leaves the cores to others.
        return 0.25 if time.monotonic() - self._last_request < 5.0 else 1.0

    async def _every(self, period_s: float | Callable[[], float], job) -> None:
        while not self._stopping:
            try:
                await job()
            except Exception:  # noqa: BLE001 - a background job must not die
                logger.exception("gateway background job failed")
            await asyncio.sleep(period_s() if callable(period_s) else period_s)
