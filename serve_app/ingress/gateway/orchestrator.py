"""The Gateway: the parts between the parsed request and the model, and each endpoint's entry.
Each request passes model access (404) here, then its endpoint's flow (through fallbacks.py,
which sends it to another model when the one it names cannot serve it): generation_flow.py for
chat and completions, embeddings.py, rerank.py and classify.py through item_flow.py (each
reserves tokens, asks the response cache, and calls the model through model_call.py), and
tokenize.py for /tokenize and /detokenize.

HTTP-free: each endpoint method takes the caller and a protocol request and returns a Reply;
the routes shape JSON or SSE. Each part keeps a local copy of the state actor's data, kept
fresh by state_sync.py, so the actor is off most requests' critical path.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel

from contract.embedding_protocol import EmbeddingRequest
from contract.endpoints import CLASSIFY, DETOKENIZE, EMBED, RERANK, TOKENIZE
from contract.errors import ModelNotFoundError, ServiceUnavailableError
from contract.ingress_args import IngressArgs
from contract.protocol import CompletionRequest, SamplingFields
from contract.scoring_protocol import ClassificationRequest, RerankRequest
from contract.tokenize_protocol import DetokenizeRequest, TokenizeRequest
from observability.recorder import Recorder
from serve_app.ingress.gateway import request_record as access_log
from serve_app.ingress.gateway.breaker_gate import Breakers
from serve_app.ingress.gateway.cache_client import CacheClient
from serve_app.ingress.gateway.callers import Authenticator, Caller
from serve_app.ingress.gateway.classify import classify_inputs
from serve_app.ingress.gateway.embeddings import embed
from serve_app.ingress.gateway.fallbacks import Fallbacks
from serve_app.ingress.gateway.generation import CHAT_SPEC, COMPLETE_SPEC
from serve_app.ingress.gateway.generation_flow import GenerationFlow
from serve_app.ingress.gateway.item_flow import ItemFlow
from serve_app.ingress.gateway.model_call import ModelCall
from serve_app.ingress.gateway.quota import Quota
from serve_app.ingress.gateway.reply import Reply
from serve_app.ingress.gateway.rerank import rerank_documents
from serve_app.ingress.gateway.state_sync import StateSync
from serve_app.ingress.gateway.tokenize import tokenizer_call
from serve_app.ingress.gateway.usage import UsageRecorder
from serve_app.ingress.model_directory import ModelDirectory, ModelEntry
from serve_app.state.client import StateClient
from serve_app.state.core import StateSettings

R = TypeVar("R", bound=BaseModel)  # a request: every one names its model


class Gateway:
    def __init__(self, args: IngressArgs, state: StateClient, directory: ModelDirectory,
                 node_reports: Callable[[], Awaitable[list[dict[str, Any]]]] | None = None,
                 metrics: Recorder | None = None):
        self.args = args
        self.node_reports = node_reports  # every node's hardware report, for /status
        self.state = state
        self.directory = directory
        self.metrics = metrics or Recorder(args.enable_metrics)
        self.authenticator = Authenticator(state, args)
        self.quota = Quota(state, clock=directory.clock)
        self.cache = CacheClient(state, args)
        self.breakers = Breakers(state, args.enable_circuit_breaker, directory, clock=directory.clock)
        self.usage = UsageRecorder(state)
        self.state_sync = StateSync(state, StateSettings.from_args(args), directory, self.breakers, self.cache,
                                    self.quota, self.usage)
        self.calls = ModelCall(self.breakers, self.quota)
        self.generation = GenerationFlow(args, self.quota, self.cache, self.usage, self.calls)
        self.items = ItemFlow(self.cache, self.quota, self.usage, self.calls, args.max_request_tokens)
        self.fallbacks = Fallbacks(directory, self.breakers, self.model)
        # When this replica last sent each model a request: the LRU order of run-time models.
        self.last_used: dict[str, float] = {}

    def start(self) -> None:
        self.state_sync.start()

    async def stop(self) -> None:
        await self.state_sync.stop()

    # ------------------------------------------------------------------ model access

    def through_alias(self, request: R) -> tuple[R, str | None]:
        """The request with an alias replaced by its model, which serves it, answers in its own
        name and is what limits, caches and breakers count; and the alias it came by, if any."""
        target = self.directory.aliases.get(request.model)
        if target is None:
            return request, None
        return request.model_copy(update={"model": target}), request.model

    async def model(self, caller: Caller, model: str, endpoint: str, via_alias: str | None = None, *,
                    wake_wait_s: float | None = None) -> ModelEntry:
        """The model's entry for a caller that may use it, or may use the alias it came by;
        `wake_wait_s` bounds the wait for a model scaled to zero (ModelDirectory.entry_for)."""
        self.state_sync.requested()
        if not caller.may_use(model, via_alias):
            raise ModelNotFoundError(via_alias or model)  # the name the client sent: an alias's model stays unnamed
        record = access_log.current()
        if record is not None and self.directory.status_of(model) is not None:
            record.model = model  # a model that exists: a bounded label, never what a client typed
        try:
            # Why a model is not ready in detail (paths, exception text) for admin keys only.
            entry = await self.directory.entry_for(model, endpoint, detail=caller.admin, wake_wait_s=wake_wait_s)
        except ServiceUnavailableError:
            if self.directory.status_of(model) == "unavailable":
                # Serve saw the replica die (or it stopped answering): a failure for the
                # breaker that no request caused. A model still loading is not one.
                await self.breakers.failed(model, None)
            self.breakers.raise_if_open(model)  # the breaker's answer says how long to wait
            raise
        if record is not None:
            record.model = model  # it exists: the directory just gave its entry
        self.last_used[model] = at = time.time()  # a model that exists: bounded
        self.state_sync.used(model, at)
        return entry

    def model_status(self, entry_status: str, model: str) -> str:
        return self.breakers.status_of(model) or entry_status

    # ------------------------------------------------------------------ the endpoints

    async def chat(self, caller: Caller, request: SamplingFields, *, no_cache: bool = False) -> Reply:
        request, alias = self.through_alias(request)
        return await self.fallbacks.serve(caller, request, CHAT_SPEC.endpoint.name, alias, lambda entry, request:
                                          self.generation.run(CHAT_SPEC, entry, caller, request, no_cache))

    async def complete(self, caller: Caller, request: CompletionRequest, *, no_cache: bool = False) -> Reply:
        request, alias = self.through_alias(request)
        return await self.fallbacks.serve(caller, request, COMPLETE_SPEC.endpoint.name, alias, lambda entry, request:
                                          self.generation.run(COMPLETE_SPEC, entry, caller, request, no_cache))

    async def embed(self, caller: Caller, request: EmbeddingRequest, *, no_cache: bool = False) -> Reply:
        request, alias = self.through_alias(request)
        return await self.fallbacks.serve(caller, request, EMBED.name, alias, lambda entry, request: embed(
            self.items, self.calls, entry, caller, request, no_cache, max_inputs=self.args.max_embedding_inputs))

    async def rerank(self, caller: Caller, request: RerankRequest, *, no_cache: bool = False) -> Reply:
        request, alias = self.through_alias(request)
        return await self.fallbacks.serve(caller, request, RERANK.name, alias, lambda entry, request:
                                          rerank_documents(self.items, self.calls, entry, caller, request, no_cache))

    async def classify(self, caller: Caller, request: ClassificationRequest, *, no_cache: bool = False) -> Reply:
        request, alias = self.through_alias(request)
        return await self.fallbacks.serve(caller, request, CLASSIFY.name, alias, lambda entry, request:
                                          classify_inputs(self.items, self.calls, entry, caller, request, no_cache))

    async def tokenize(self, caller: Caller, request: TokenizeRequest) -> Reply:
        request, alias = self.through_alias(request)
        entry = await self.model(caller, request.model, TOKENIZE.name, alias)
        return await tokenizer_call(self.quota, self.calls, self.usage, TOKENIZE, entry, caller, request)

    async def detokenize(self, caller: Caller, request: DetokenizeRequest) -> Reply:
        request, alias = self.through_alias(request)
        entry = await self.model(caller, request.model, DETOKENIZE.name, alias)
        return await tokenizer_call(self.quota, self.calls, self.usage, DETOKENIZE, entry, caller, request)
