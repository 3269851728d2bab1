"""The contract between the ingress and a model application, and between ModelServer and the
task it loads.

`ModelClient` is the typed handle API of a model application: the ingress reaches models
through it (a DeploymentHandle in production, a fake in unit tests), and so can any Ray job.
Only the small pydantic objects below and in protocol.py cross it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from pydantic import BaseModel

from .protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
)


class ModelInfo(BaseModel):
    """What a model replica reports about itself (crosses the handle; not a wire format)."""

    id: str
    task: str
    owned_by: str
    created: int
    backend: str
    device: str
    source: str
    max_model_len: int | None = None
    embedding_dimensions: int | None = None
    request_timeout_s: float = 300.0
    # The endpoints this model serves (its task's, from the task table): the ingress refuses
    # the others with a 400 without calling the model.
    endpoints: list[str] = []
    # Which replica answered: the ingress tells a replacement replica from the one it replaced.
    replica_id: str = ""

    @property
    def revision(self) -> str:
        """Changes whenever the model is (re)loaded: cached responses of an older load never match."""
        return f"{self.source}@{self.created}"


class EngineStats(BaseModel):
    running_requests: int = 0
    waiting_requests: int = 0
    generated_tokens_total: int = 0
    cancelled_requests_total: int = 0
    finished_requests_total: int = 0
    kv_cache_usage: float | None = None


class ModelClient(Protocol):
    """A model application as its callers see it: one method per endpoint method of the
    endpoint table (contract/endpoints.py), plus info() and stats()."""

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletionResponse: ...

    def chat_stream(self, request: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk]: ...

    async def complete(self, request: CompletionRequest) -> CompletionResponse: ...

    def complete_stream(self, request: CompletionRequest) -> AsyncIterator[CompletionResponse]: ...

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse: ...

    async def info(self) -> ModelInfo: ...

    async def stats(self) -> EngineStats: ...


class ServingTask(Protocol):
    """What a task's load() returns; ModelServer calls it.

    Besides these, it has one coroutine (or async generator) per handle method of the
    endpoints its TaskSpec names, e.g. `chat` and `chat_stream` for the chat endpoint, taking
    the endpoint's request model. Optional attributes that ModelInfo reports:
    `max_model_len` (context length) and `embedding_dimensions`.
    """

    def stats(self) -> EngineStats: ...

    def check_health(self) -> None:
        """Raise if the task can no longer serve (Ray Serve then replaces the replica)."""

    def shutdown(self) -> None: ...
