"""The contract between the ingress and a model application, and between ModelServer and the
task it loads.

`ModelClient` is the typed handle API of a model application: the ingress reaches models
through it (a DeploymentHandle in production, a fake in unit tests), and so can any Ray job.
Only the small pydantic objects below and in protocol.py cross it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol, TypeVar

from pydantic import BaseModel

from .embedding_protocol import EmbeddingRequest, EmbeddingResponse
from .errors import InvalidRequestError
from .model_cards import ModelCapabilities
from .protocol import (
    BudgetedRequest,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    TokenBudget,
)
from .tokenize_protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
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
    # The model's version: the same on every replica of one configuration and set of files, so
    # the response cache is shared by them; a new version's answers never match an old one's.
    revision: str = ""
    platform: str = ""  # hardware.report.PLATFORMS: where this replica runs
    capabilities: ModelCapabilities | None = None  # generation models: what their engine supports
    node_id: str | None = None
    node_ip: str | None = None
    hostname: str | None = None
    # Embedding inputs batched per call: larger requests are called with progress heartbeats.
    max_batch_size: int | None = None
    # Most documents in one rerank request: the ingress refuses more before any cache lookup.
    max_rerank_documents: int | None = None
    # The model's fallback args (ModelAppArgs), which the ingress's gateway applies.
    fallbacks: list[str] = []
    context_fallbacks: list[str] = []
    fallback_after_s: float | None = None


class NotStartedInTime(TimeoutError):
    """A model call that no replica started within request_timeout_s: it waited in Serve's queue
    behind others (or for a replica that is gone). The model may be healthy, only busy, so it is
    a 503 to retry, not a failure of the model."""


B = TypeVar("B", bound=BudgetedRequest)


def with_token_budget(request: B, max_tokens: int, counted_tokens: int = 0) -> B:
    """`request` carrying its budget to the replica: at most `max_tokens` in all, of which
    `counted_tokens` (the items the ingress answers from its cache) are already spent."""
    request._token_budget = TokenBudget(max_tokens=max_tokens, counted_tokens=counted_tokens)
    return request


def check_request_tokens(request: BudgetedRequest, tokens: int, *, param: str) -> None:
    """Raise the 400 on `param` when `tokens` (the tokenizer's count of what the request sent)
    and what the ingress counted are over the request's budget. A handle caller that set no
    budget has none."""
    budget = request._token_budget
    if budget is not None and budget.counted_tokens + tokens > budget.max_tokens:
        raise request_tokens_exceeded(budget.counted_tokens + tokens, budget.max_tokens, param)


def request_tokens_exceeded(tokens: int, limit: int, param: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"{param} has {tokens} tokens in all; at most {limit} tokens are allowed per request (max_request_tokens).",
        param=param, code="request_tokens_exceeded",
    )


class EngineStats(BaseModel):
    running_requests: int = 0
    waiting_requests: int = 0
    generated_tokens_total: int = 0
    cancelled_requests_total: int = 0
    finished_requests_total: int = 0
    kv_cache_usage: float | None = None


class ReplicaRecord(BaseModel):
    """What a model replica tells its node's hardware actor about itself on every health check;
    /status lists every replica of every model from these."""

    model: str
    replica_id: str
    node_id: str | None = None
    node_ip: str | None = None
    hostname: str | None = None
    platform: str
    backend: str
    device: str
    pid: int
    started_at: int
    engine: EngineStats
    ongoing_requests: int = 0  # calls this replica is working on (streams until their last chunk)
    rss_bytes: int | None = None  # the replica process's resident memory, measured at this report
    reported_at: float | None = None  # unix time of this report (/status says how old it is)


class ModelClient(Protocol):
    """A model application as its callers see it: one method per endpoint method of the
    endpoint table (contract/endpoints.py), plus info() and stats()."""

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletionResponse: ...

    def chat_stream(self, request: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk]: ...

    async def complete(self, request: CompletionRequest) -> CompletionResponse: ...

    def complete_stream(self, request: CompletionRequest) -> AsyncIterator[CompletionResponse]: ...

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse: ...

    async def tokenize(self, request: TokenizeRequest) -> TokenizeResponse: ...

    async def detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse: ...

    async def call_with_progress(self, method: str, request, timeout_s: float,
                                 on_start: Callable[[], None] | None = None):
        """The answer of `method` (chat, complete, embed, rerank, classify) for a call that may run long: raises
        NotStartedInTime when no replica starts it within timeout_s, and TimeoutError when the
        model then shows no progress (its heartbeats stop) for timeout_s. `on_start` hears
        when a replica starts it."""
        ...

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
