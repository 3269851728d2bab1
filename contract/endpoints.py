"""The endpoint table: each OpenAI endpoint's route, request model and the typed handle
methods of a model application behind it.

Tasks name the endpoints they serve (contract/tasks.py); the ingress routes, the gateway and
ModelServer look the rest up here, so an endpoint is described once.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from .protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str
    request: type[BaseModel]
    method: str  # the handle method that returns a whole response
    stream_method: str | None = None  # the handle method that streams chunks, if any

    @property
    def methods(self) -> tuple[str, ...]:
        return (self.method, self.stream_method) if self.stream_method else (self.method,)


CHAT = Endpoint("chat", "/v1/chat/completions", ChatCompletionRequest, "chat", "chat_stream")
COMPLETE = Endpoint("complete", "/v1/completions", CompletionRequest, "complete", "complete_stream")
EMBED = Endpoint("embed", "/v1/embeddings", EmbeddingRequest, "embed")

ENDPOINTS: dict[str, Endpoint] = {endpoint.name: endpoint for endpoint in (CHAT, COMPLETE, EMBED)}
