"""The endpoint table: each OpenAI endpoint's route, request and response models (and what
its streamed events carry), and the typed handle methods of a model application behind it.

Tasks name the endpoints they serve (contract/tasks.py); the ingress routes, the gateway and
ModelServer look the rest up here, so an endpoint is described once.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from .embedding_protocol import EmbeddingRequest, EmbeddingResponse
from .protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
)
from .scoring_protocol import (
    ClassificationRequest,
    ClassificationResponse,
    RerankRequest,
    RerankResponse,
)
from .tokenize_protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str
    request: type[BaseModel]
    response: type[BaseModel]
    method: str  # the handle method that returns a whole response
    stream_method: str | None = None  # the handle method that streams chunks, if any
    chunk: type[BaseModel] | None = None  # what each streamed event carries
    aliases: tuple[str, ...] = ()  # other paths of the same endpoint (/rerank, as TEI and Jina name it)

    @property
    def methods(self) -> tuple[str, ...]:
        return (self.method, self.stream_method) if self.stream_method else (self.method,)


CHAT = Endpoint("chat", "/v1/chat/completions", ChatCompletionRequest, ChatCompletionResponse, "chat", "chat_stream",
                ChatCompletionChunk)
COMPLETE = Endpoint("complete", "/v1/completions", CompletionRequest, CompletionResponse, "complete", "complete_stream",
                    CompletionResponse)
EMBED = Endpoint("embed", "/v1/embeddings", EmbeddingRequest, EmbeddingResponse, "embed")
RERANK = Endpoint("rerank", "/v1/rerank", RerankRequest, RerankResponse, "rerank", aliases=("/rerank",))
CLASSIFY = Endpoint("classify", "/v1/classify", ClassificationRequest, ClassificationResponse, "classify")
# vLLM's paths, without /v1: the model's own tokenizer, no engine involved.
TOKENIZE = Endpoint("tokenize", "/tokenize", TokenizeRequest, TokenizeResponse, "tokenize")
DETOKENIZE = Endpoint("detokenize", "/detokenize", DetokenizeRequest, DetokenizeResponse, "detokenize")

ENDPOINTS: dict[str, Endpoint] = {endpoint.name: endpoint
                                  for endpoint in (CHAT, COMPLETE, EMBED, RERANK, CLASSIFY, TOKENIZE, DETOKENIZE)}
