"""The embeddings endpoint on the wire (OpenAI's /v1/embeddings)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .protocol import BudgetedRequest, NonEmptyText, OpenAIResponse, TokenIds
from .schema_rules import integer

MAX_EMBEDDING_INPUTS = 2048


class EmbeddingRequest(BudgetedRequest):
    model: str = Field(..., min_length=1)
    # At most MAX_EMBEDDING_INPUTS inputs (OpenAI's limit); the ingress may be set lower
    # (IngressArgs.max_embedding_inputs), which its OpenAPI document then shows.
    input: NonEmptyText | Annotated[list[NonEmptyText], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)] | TokenIds | Annotated[
        list[TokenIds], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)
    ]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: integer(ge=1) | None = None
    user: str | None = None

    def inputs(self) -> list[str | list[int]]:
        i = self.input
        if isinstance(i, str):
            return [i]
        if i and isinstance(i[0], int):
            return [list(i)]
        return list(i)


class EmbeddingData(OpenAIResponse):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(OpenAIResponse):
    prompt_tokens: int
    total_tokens: int
    # Tokens of each input, for the gateway's per-input cache. Never serialised to clients.
    input_tokens: list[int] | None = Field(None, exclude=True)


class EmbeddingResponse(OpenAIResponse):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage
