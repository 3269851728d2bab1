"""rerank: /v1/rerank (and /rerank) with a cross-encoder, batched across requests.

A cross-encoder reads the query and one document together ([CLS] query [SEP] document [SEP])
and gives one logit; the relevance score is its sigmoid, as sentence-transformers' CrossEncoder,
TEI and vLLM report it. Each (query, document) pair is one sequence of the batch. A document
too long for the context is truncated to fit (Cohere and Jina do the same); a query that
leaves no room for any document is a 400.
"""

from __future__ import annotations

import logging

from contract.config import ModelAppArgs
from contract.errors import ContextLengthExceededError, too_many_documents
from contract.model_api import check_request_tokens
from contract.protocol import new_id
from contract.scoring_protocol import (
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankUsage,
)
from contract.tasks import TaskSpec

from ..engines.classifiers import Sequence
from ..model_files import load_tokenizer
from .sequence_scoring import (
    SequenceScorer,
    apply_activation,
    context_limit,
    is_sequence_classifier,
    load_engine,
    num_labels,
    read_config,
)

logger = logging.getLogger("ray.serve")


class RerankTask(SequenceScorer):
    def __init__(self, model_id: str, tokenizer, engine, *, max_input_tokens: int, max_documents: int,
                 max_batch_size: int, batch_wait_timeout_s: float):
        super().__init__(model_id, engine, max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s)
        self.tokenizer = tokenizer
        self.max_model_len = max_input_tokens  # ModelInfo reports it
        self.max_rerank_documents = max_documents
        self._pair_specials = tokenizer.num_special_tokens_to_add(pair=True)

    async def rerank(self, request: RerankRequest) -> RerankResponse:
        if len(request.documents) > self.max_rerank_documents:
            raise too_many_documents(len(request.documents), self.max_rerank_documents, self.model_id)
        pairs = self._tokenize(request.query, request.documents)
        check_request_tokens(request, sum(len(pair.ids) for pair in pairs), param="documents")
        scores = apply_activation(await self.logits(pairs), "sigmoid")[:, 0]
        order = sorted(range(len(scores)), key=lambda i: -scores[i])  # stable: ties keep document order
        results = [
            RerankResult(index=i, relevance_score=float(scores[i]),
                         document=RerankDocument(text=request.documents[i]) if request.return_documents else None)
            for i in order[: request.top_n]
        ]
        tokens = [len(pair.ids) for pair in pairs]
        return RerankResponse(
            id=new_id("rerank"), model=self.model_id, results=results,
            usage=RerankUsage(prompt_tokens=sum(tokens), total_tokens=sum(tokens), input_tokens=tokens),
        )

    def _tokenize(self, query: str, documents: list[str]) -> list[Sequence]:
        query_tokens = len(self.tokenizer(query, add_special_tokens=False)["input_ids"])
        if query_tokens + self._pair_specials >= self.max_model_len:
            raise ContextLengthExceededError(
                f"query has {query_tokens} tokens; model '{self.model_id}' reads at most {self.max_model_len} tokens "
                f"per query and document together, so the query must be shorter than "
                f"{self.max_model_len - self._pair_specials} tokens.",
                param="query",
            )
        encoded = self.tokenizer([query] * len(documents), documents, add_special_tokens=True,
                                 truncation="only_second", max_length=self.max_model_len)
        types = encoded.get("token_type_ids")
        return [
            Sequence(ids, types[row] if types is not None else [0] * len(ids))
            for row, ids in enumerate(encoded["input_ids"])
        ]


def claims(config: dict, files: frozenset[str]) -> bool:
    """A cross-encoder: a ...ForSequenceClassification model with one output (sentence-transformers
    saves a CrossEncoder so)."""
    return is_sequence_classifier(config) and num_labels(config) == 1


def load(model_id: str, args: ModelAppArgs, prepared, backend) -> RerankTask:
    config = read_config(prepared.hf_dir)
    if num_labels(config) != 1:
        raise ValueError(
            f"{model_id}: a rerank model is a cross-encoder with one output, but this one has {num_labels(config)} "
            "labels; serve it with task text-classification"
        )
    tokenizer = load_tokenizer(prepared.hf_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    engine = load_engine(args, prepared, backend, pad_id)
    limit = context_limit(prepared.hf_dir, tokenizer)
    logger.info("%s: %s cross-encoder on %s, query and document up to %d tokens, at most %d documents",
                model_id, engine.name, engine.device, limit, args.max_rerank_documents)
    return RerankTask(
        model_id, tokenizer, engine, max_input_tokens=limit, max_documents=args.max_rerank_documents,
        max_batch_size=args.effective_max_batch_size, batch_wait_timeout_s=args.effective_batch_wait_timeout_s,
    )


TASK = TaskSpec(
    name="rerank",
    summary="cross-encoder reranking (/v1/rerank, /rerank), query-document pairs batched across requests as the engine frees up",
    endpoints=("rerank", "tokenize", "detokenize"),
    load=load,
    hf_task="text-classification",
    fields=frozenset({"max_rerank_documents", "encoder_streams"}),
    claims=claims,
    engines=(
        ("openvino", "OpenVINO runtime sequence classifier, batches on its streams"),
        ("transformers", "torch sequence classifier, one batch at a time"),
    ),
)
