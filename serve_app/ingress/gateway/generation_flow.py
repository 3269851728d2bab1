"""The gateway's flow for chat and completions (each endpoint's spec in generation.py): tokens
reserved, the response cache for deterministic requests, the model call, whole or streamed; a
stream settles its tokens, usage, breaker report and cache store when it ends, however it ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from contract.ingress_args import IngressArgs
from contract.protocol import SamplingFields, StreamOptions
from serve_app.ingress.gateway import request_record
from serve_app.ingress.gateway.cache_client import CacheClient
from serve_app.ingress.gateway.cache_keys import canonical_key, is_deterministic
from serve_app.ingress.gateway.callers import Caller
from serve_app.ingress.gateway.failures import is_cancellation, never_ran
from serve_app.ingress.gateway.generation import (
    GenerationSpec,
    StreamTotals,
    replayed,
    trimmed_chunks,
)
from serve_app.ingress.gateway.model_call import ModelCall
from serve_app.ingress.gateway.quota import Admission, Quota
from serve_app.ingress.gateway.reply import ChunkStream, Reply
from serve_app.ingress.gateway.usage import UsageRecorder
from serve_app.ingress.model_directory import ModelEntry


class GenerationFlow:
    def __init__(self, args: IngressArgs, quota: Quota, cache: CacheClient, usage: UsageRecorder, calls: ModelCall):
        self._default_reservation = args.default_token_reservation
        self._quota = quota
        self._cache = cache
        self._usage = usage
        self._calls = calls

    async def run(self, spec: GenerationSpec, entry: ModelEntry, caller: Caller, request: SamplingFields,
                  no_cache: bool) -> Reply:
        assert entry.client is not None and entry.info is not None
        tokens, param = spec.reservation(request, self._default_reservation)
        admission = await self._quota.admit(caller, tokens, too_large_param=param)
        cache_key = None
        if self._cache.enabled and is_deterministic(request.model_dump(include={"temperature", "seed", "n"})):
            cache_key = canonical_key(spec.endpoint.name, request.model_dump(mode="json"), entry.info.revision,
                                      self._cache.scope(caller))
            if not no_cache:
                (hit,) = await self._cache.get_many([cache_key])
                if (record := request_record.current()) is not None:
                    record.looked_up("response", int(hit is not None), int(hit is None))
                if hit is not None:
                    return self._from_cache(spec, caller, request, admission, hit)
        await self._calls.admit(request.model, admission)
        cache = "MISS" if cache_key else None
        if request.stream:
            stream = self._stream(spec, entry, caller, request, admission, cache_key, entry.info.request_timeout_s)
            return Reply(stream, admission.headers, cache)
        response = await self._calls.with_progress(entry, spec.endpoint.method, request, admission)
        self._quota.settle(admission, response.usage.total_tokens)
        self._usage.record(caller, response.usage.prompt_tokens, response.usage.completion_tokens)
        if cache_key:
            self._cache.put(cache_key, response.model_dump_json().encode(), request.model)
        return Reply(response, admission.headers, cache)

    def _from_cache(self, spec: GenerationSpec, caller: Caller, request: SamplingFields, admission: Admission,
                    hit: bytes) -> Reply:
        self._quota.settle(admission, 0)  # a hit burns no compute: refund the tokens
        stored = spec.from_cache(hit)
        usage = stored.usage
        self._usage.record(caller, usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0)
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
            outcome, started = "aborted", False
            try:
                async for chunk in trimmed_chunks(upstream, spec, timeout_s, client_options, totals,
                                                  on_first=self._calls.queue_timer(model)):
                    started = True
                    yield chunk
                outcome = "done"
            except BaseException as exc:
                if isinstance(exc, GeneratorExit):
                    raise
                if is_cancellation(exc):
                    raise asyncio.CancelledError from None
                error = (await self._calls.failure(exc, model, timeout_s, caller))[0]
                outcome = "refused" if never_ran(error) and not started else "failed"
                raise error from None
            finally:
                self._settle_stream(spec, caller, admission, model, totals, outcome, cache_key)

        return ChunkStream(bookkept(), upstream.cancel)

    def _settle_stream(self, spec: GenerationSpec, caller: Caller, admission: Admission, model: str,
                       totals: StreamTotals, outcome: str, cache_key: str | None) -> None:
        if outcome == "refused":  # the model never ran it
            self._quota.refund(admission)
            return
        usage = totals.usage
        self._quota.settle(admission, usage.total_tokens if usage else 0)
        if usage:
            self._usage.record(caller, usage.prompt_tokens, usage.completion_tokens)
        if outcome == "done":
            self._calls.succeeded_later(model)
            if cache_key and usage:
                self._cache.put(cache_key, spec.assemble(model, totals).model_dump_json().encode(), model)
