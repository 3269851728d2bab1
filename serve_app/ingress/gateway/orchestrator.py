"""The gateway's flow for each request, between the parsed request and the model: model access
-> rate limit (reserve tokens) -> response cache -> circuit breaker -> the model call, with its
timeout -> breaker report (with its caller), cache store, token settlement, usage.

HTTP-free: each endpoint method takes the caller and a protocol request and returns a Reply (a
protocol object or a chunk stream, plus rate-limit and cache facts); the routes shape JSON or
SSE. Each part keeps a local copy of the state actor's data (keys cached, quota leased in
chunks, breakers and cache keys synced every 250 ms, usage flushed in batches), so the actor is
off most requests' critical path, and while it restarts each part degrades to its local copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from contract.config import IngressArgs
from contract.endpoints import CLASSIFY, EMBED, RERANK
from contract.errors import APIError, ModelNotFoundError, ServiceUnavailableError
from contract.protocol import CompletionRequest, EmbeddingRequest, SamplingFields, StreamOptions
from contract.scoring_protocol import ClassificationRequest, RerankRequest
from observability import catalogue
from observability.recorder import Recorder
from serve_app.ingress.gateway import request_record as access_log
from serve_app.ingress.gateway.breaker_gate import Breakers
from serve_app.ingress.gateway.cache_client import CacheClient
from serve_app.ingress.gateway.cache_keys import canonical_key, is_deterministic
from serve_app.ingress.gateway.callers import Authenticator, Caller
from serve_app.ingress.gateway.classify import classify_inputs
from serve_app.ingress.gateway.embeddings import embed
from serve_app.ingress.gateway.failures import classify_failure, is_cancellation, own_failure
from serve_app.ingress.gateway.generation import (
    CHAT_SPEC,
    COMPLETE_SPEC,
    GenerationSpec,
    StreamTotals,
    replayed,
    trimmed_chunks,
)
from serve_app.ingress.gateway.quota import Admission, Quota
from serve_app.ingress.gateway.reply import ChunkStream, Reply
from serve_app.ingress.gateway.rerank import rerank_documents
from serve_app.ingress.gateway.usage import UsageRecorder
from serve_app.ingress.model_directory import ModelDirectory, ModelEntry
from serve_app.state.client import StateClient, StateUnavailable
from serve_app.state.core import StateSettings

logger = logging.getLogger("ray.serve")

STOP_WAIT_S = 2.0


class Gateway:
    def __init__(self, args: IngressArgs, state: StateClient, directory: ModelDirectory,
                 node_reports: Callable[[], Awaitable[list[dict[str, Any]]]] | None = None):
        self.args = args
        self.node_reports = node_reports  # every node's hardware report, for /status
        self.state = state
        self.directory = directory
        self.authenticator = Authenticator(state, args)
        self.quota = Quota(state)
        self.cache = CacheClient(state, args)
        self.breakers = Breakers(state, args.enable_circuit_breaker, directory)
        self.usage = UsageRecorder(state)
        self.metrics = Recorder(args.enable_metrics)
        self._background: list[asyncio.Task] = []
        self._last_request = float("-inf")
        self.state_settings = StateSettings.from_args(args)
        self._stopping = False
        self._state_started: float | None = None
        # When this replica last sent each model a request: the LRU order of run-time models.
        self._models_used: dict[str, float] = {}  # since the last sync
        self.last_used: dict[str, float] = {}

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._background = [
            loop.create_task(self._every(self._sync_period, self.sync)),
            loop.create_task(self._every(0.25, self.quota.flush)),
            loop.create_task(self._every(0.25, self.cache.flush)),
            loop.create_task(self._every(1.0, self.usage.flush)),
        ]

    async def stop(self) -> None:
        self._stopping = True
        for task in self._background:
            task.cancel()
        # Bounded: Python 3.11's wait_for can swallow a cancellation that lands as its inner
        # call completes, and a job that misses its cancel must not hang the shutdown.
        if self._background:
            await asyncio.wait(self._background, timeout=STOP_WAIT_S)
        for flush in (self.quota.flush, self.cache.flush, self.usage.flush):
            with contextlib.suppress(Exception):
                await flush()

    async def sync(self) -> None:
        """Breaker states and the cache's key changes, in one call to the state actor."""
        used, self._models_used = self._models_used, {}
        try:
            result = await self.state.call("sync", self.cache.version, *self.cache.take_local_counts(),
                                           self.directory.runtime_version, used, timeout_s=0.5)
        except StateUnavailable:
            for model, at in used.items():  # sent with the next sync instead
                self._models_used[model] = max(at, self._models_used.get(model, 0.0))
            return
        self.breakers.snapshots = result["breakers"]
        self.cache.apply(result["cache"])
        if "models" in result:
            self.directory.set_runtime(result["models"]["version"], result["models"]["records"])
        if result.get("started") != self._state_started:
            # The state actor outlives deploys, and a restart re-creates it with the settings it
            # was first created with: give it this deployment's settings, so a redeploy's new
            # cache or breaker settings take effect instead of being silently ignored.
            with contextlib.suppress(StateUnavailable):  # retried on the next sync
                await self.state.call("configure", self.state_settings, timeout_s=2.0)
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

    # ------------------------------------------------------------------ model access

    async def model(self, caller: Caller, model: str, endpoint: str) -> ModelEntry:
        self._last_request = time.monotonic()
        if not caller.may_use(model):
            raise ModelNotFoundError(model)
        record = access_log.current()
        if record is not None and self.directory.status_of(model) is not None:
            record.model = model  # a model that exists: a bounded label, never what a client typed
        try:
            # Why a model is not ready in detail (paths, exception text) for admin keys only.
            entry = await self.directory.entry_for(model, endpoint, detail=caller.admin)
        except ServiceUnavailableError:
            if self.directory.status_of(model) == "unavailable":
                # Serve saw the replica die (or it stopped answering): a failure for the
                # breaker that no request caused. A model still loading is not one.
                await self.breakers.failed(model, None)
            self.breakers.raise_if_open(model)  # the breaker's answer says how long to wait
            raise
        self.last_used[model] = self._models_used[model] = time.time()  # a model that exists: bounded
        return entry

    def model_status(self, entry_status: str, model: str) -> str:
        return self.breakers.status_of(model) or entry_status

    # ------------------------------------------------------------------ the endpoints

    async def chat(self, caller: Caller, request: SamplingFields, *, no_cache: bool = False) -> Reply:
        return await self._generate(CHAT_SPEC, caller, request, no_cache)

    async def complete(self, caller: Caller, request: CompletionRequest, *, no_cache: bool = False) -> Reply:
        return await self._generate(COMPLETE_SPEC, caller, request, no_cache)

    async def embed(self, caller: Caller, request: EmbeddingRequest, *, no_cache: bool = False) -> Reply:
        entry = await self.model(caller, request.model, EMBED.name)
        return await embed(self, entry, caller, request, no_cache)

    async def rerank(self, caller: Caller, request: RerankRequest, *, no_cache: bool = False) -> Reply:
        entry = await self.model(caller, request.model, RERANK.name)
        return await rerank_documents(self, entry, caller, request, no_cache)

    async def classify(self, caller: Caller, request: ClassificationRequest, *, no_cache: bool = False) -> Reply:
        entry = await self.model(caller, request.model, CLASSIFY.name)
        return await classify_inputs(self, entry, caller, request, no_cache)

    async def call_model(self, call, model: str, timeout_s: float, admission: Admission, *, bounded: bool = True):
        """A whole (non-streaming) model call: its timeout (unless the call bounds itself by
        progress: bounded=False), the breaker report, and on failure the refund of the
        reserved tokens and the error the client gets."""
        try:
            response = await (asyncio.wait_for(call, timeout_s) if bounded else call)
        except BaseException as exc:
            if is_cancellation(exc):
                self.quota.settle(admission, 0)
                raise asyncio.CancelledError from None
            error, own = await self._failure(exc, model, timeout_s, admission.caller)
            # A request shown to fail by itself is charged its reservation: its caller's limits
            # pay for the work it cost, never the model's breaker.
            self.quota.settle(admission, admission.reserved if own else 0)
            raise error from None
        await self.breakers.succeeded(model)
        return response

    async def _failure(self, exc: BaseException, model: str, timeout_s: float, caller: Caller) -> tuple[APIError, bool]:
        """The error a failed model call gives its caller, after the breaker heard of it (and,
        where that caller's failures alone reached its threshold, probed the model), and whether
        the model answered that probe: the failure was the request's own."""
        error, failure = classify_failure(exc, model, timeout_s)
        if failure and await self.breakers.failed(model, caller.cache_scope):
            return own_failure(error, model), True
        return error, False

    def queue_timer(self, model: str) -> Callable[..., None]:
        """Called with a call's first heartbeat or chunk, and the seconds the replica worked
        before sending it (a stream's prefill): the time the call waited in Serve's queue, as
        hf_server_request_queue_seconds."""
        sent = time.monotonic()

        def started(replica_s: float = 0.0) -> None:
            self.metrics.observe(catalogue.REQUEST_QUEUE, max(0.0, time.monotonic() - sent - replica_s), model=model)

        return started

    async def admit_to_model(self, model: str, admission: Admission) -> None:
        """The breaker's word before a model call; a refusal refunds the reservation."""
        try:
            await self.breakers.admit(model)
        except APIError:
            self.quota.settle(admission, 0)
            raise

    # ------------------------------------------------------------------ generation

    async def _generate(self, spec: GenerationSpec, caller: Caller, request: SamplingFields, no_cache: bool) -> Reply:
        entry = await self.model(caller, request.model, spec.endpoint.name)
        assert entry.client is not None and entry.info is not None
        tokens, param = spec.reservation(request, self.args.default_token_reservation)
        admission = await self.quota.admit(caller, tokens, too_large_param=param)
        cache_key = None
        if self.cache.enabled and is_deterministic(request.model_dump(include={"temperature", "seed", "n"})):
            cache_key = canonical_key(spec.endpoint.name, request.model_dump(mode="json"), entry.info.revision,
                                      self.cache.scope(caller))
            if not no_cache:
                (hit,) = await self.cache.get_many([cache_key])
                self.metrics.inc(catalogue.CACHE_HITS if hit is not None else catalogue.CACHE_MISSES, model=request.model, kind="response")
                if hit is not None:
                    return self._from_cache(spec, caller, request, admission, hit)
        await self.admit_to_model(request.model, admission)
        cache = "MISS" if cache_key else None
        timeout = entry.info.request_timeout_s
        if request.stream:
            stream = self._stream(spec, entry, caller, request, admission, cache_key, timeout)
            return Reply(stream, admission.headers, cache)
        # A generation may run long: it is bounded by the model's progress, not a total time.
        call = entry.client.call_with_progress(spec.endpoint.method, request, timeout,
                                               on_start=self.queue_timer(request.model))
        response = await self.call_model(call, request.model, timeout, admission, bounded=False)
        self.quota.settle(admission, response.usage.total_tokens)
        self.usage.record(caller, response.usage.prompt_tokens, response.usage.completion_tokens)
        if cache_key:
            self.cache.put(cache_key, response.model_dump_json().encode(), request.model)
        return Reply(response, admission.headers, cache)

    def _from_cache(self, spec: GenerationSpec, caller: Caller, request: SamplingFields, admission: Admission,
                    hit: bytes) -> Reply:
        self.quota.settle(admission, 0)  # a hit burns no compute: refund the tokens
        stored = spec.from_cache(hit)
        usage = stored.usage
        self.usage.record(caller, usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0)
        if request.stream:
            chunks = spec.replay(stored, request.stream_options or StreamOptions())
            return Reply(ChunkStream(replayed(chunks)), admission.headers, "HIT")
        return Reply(stored, admission.headers, "HIT")

    def _stream(self, spec: GenerationSpec, entry: ModelEntry, caller: Caller, request: SamplingFields,
                admission: Admission, cache_key: str | None, timeout_s: float) -> ChunkStream:
        client_options = request.stream_options or StreamOptions()
        # Ask for usage on every chunk: it settles the tokens of streams a client aborts.
        internal = request.model_copy(update={"stream_options": StreamOptions(include_usage=True, continuous_usage_stats=True)})
        upstream = getattr(entry.client, spec.endpoint.stream_method)(internal)
        totals = StreamTotals()
        model = request.model

        async def bookkept() -> AsyncIterator[Any]:
            outcome = "aborted"
            try:
                async for chunk in trimmed_chunks(upstream, spec, timeout_s, client_options, totals,
                                                  on_first=self.queue_timer(model)):
                    yield chunk
                outcome = "done"
            except BaseException as exc:
                if isinstance(exc, GeneratorExit):
                    raise
                if is_cancellation(exc):
                    raise asyncio.CancelledError from None
                outcome = "failed"
                raise (await self._failure(exc, model, timeout_s, caller))[0] from None
            finally:
                self._settle_stream(spec, caller, admission, model, totals, outcome, cache_key)

        return ChunkStream(bookkept(), upstream.cancel)

    def _settle_stream(self, spec: GenerationSpec, caller: Caller, admission: Admission, model: str,
                       totals: StreamTotals, outcome: str, cache_key: str | None) -> None:
        usage = totals.usage
        self.quota.settle(admission, usage.total_tokens if usage else 0)
        if usage:
            self.usage.record(caller, usage.prompt_tokens, usage.completion_tokens)
        if outcome == "done":
            asyncio.get_running_loop().create_task(self.breakers.succeeded(model))
            if cache_key and usage:
                self.cache.put(cache_key, spec.assemble(model, totals).model_dump_json().encode(), model)
