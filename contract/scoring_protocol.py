"""Wire format of the scoring endpoints: /v1/rerank in the Cohere / Jina shape that TEI, Infinity
and vLLM also accept (with vLLM's id and usage), and /v1/classify in vLLM's shape with every
label's score. Pydantic only, like protocol.py, whose conventions these follow: requests are
strict and accept unknown fields, responses forbid extras.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_serializer

from .protocol import BudgetedRequest, NonEmptyText, OpenAIResponse
from .schema_rules import integer

MAX_RERANK_DOCUMENTS = 10_000  # the protocol's bound; each model's own (max_rerank_documents) is lower
MAX_CLASSIFY_INPUTS = 2048  # as embeddings: OpenAI's limit on inputs per request


# ----------------------------------------------------------------------------- rerank


class RerankRequest(BudgetedRequest):
    model: str = Field(..., min_length=1)
    query: NonEmptyText
    # Each model accepts at most its max_rerank_documents (a 400 naming `documents` above).
    documents: Annotated[list[NonEmptyText], Field(min_length=1, max_length=MAX_RERANK_DOCUMENTS)]
    top_n: integer(ge=1) | None = None  # more than len(documents) returns them all, as Cohere does
    return_documents: bool = False
    user: str | None = None


class RerankDocument(OpenAIResponse):
    text: str


class RerankResult(OpenAIResponse):
    index: int  # the document's position in the request
    relevance_score: float
    document: RerankDocument | None = None  # with return_documents

    @model_serializer(mode="wrap")
    def _omit_document(self, handler):
        out = handler(self)
        if out.get("document") is None:
            out.pop("document", None)
        return out


class RerankUsage(OpenAIResponse):
    prompt_tokens: int
    total_tokens: int
    # Tokens of each (query, document) pair, for the gateway's per-document cache. Never sent.
    input_tokens: list[int] | None = Field(None, exclude=True)


class RerankResponse(OpenAIResponse):
    id: str
    model: str
    results: list[RerankResult]  # by relevance_score, highest first
    usage: RerankUsage


# ----------------------------------------------------------------------------- classify


class ClassificationRequest(BudgetedRequest):
    model: str = Field(..., min_length=1)
    input: NonEmptyText | Annotated[list[NonEmptyText], Field(min_length=1, max_length=MAX_CLASSIFY_INPUTS)]
    user: str | None = None

    def inputs(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class LabelScore(OpenAIResponse):
    label: str
    score: float


class ClassificationData(OpenAIResponse):
    index: int
    label: str  # the label with the highest score
    probs: list[float]  # one per class, in the model's id2label order
    num_classes: int
    scores: list[LabelScore]  # every label with its score, highest first (transformers' pipeline with top_k=None)


class ClassificationUsage(OpenAIResponse):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int
    # Tokens of each input, for the gateway's per-input cache. Never sent.
    input_tokens: list[int] | None = Field(None, exclude=True)


class ClassificationResponse(OpenAIResponse):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[ClassificationData]
    usage: ClassificationUsage
