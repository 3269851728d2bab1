"""text-classification: /v1/classify with a sequence classifier, batched across requests.

Each input gets a score for every label of the model's id2label: softmax over the labels, or
a sigmoid per label for multi-label models (problem_type multi_label_classification) and
one-output models, or the raw logits for regression, as transformers' text-classification
pipeline decides. An input longer than the context is a 400, as with embeddings.
"""

from __future__ import annotations

import logging

from contract.config import ModelAppArgs
from contract.errors import ContextLengthExceededError
from contract.model_api import check_request_tokens
from contract.protocol import new_id, now
from contract.scoring_protocol import (
    ClassificationData,
    ClassificationRequest,
    ClassificationResponse,
    ClassificationUsage,
    LabelScore,
)
from contract.tasks import TaskSpec

from ..engines.classifiers import Sequence
from ..model_files import load_tokenizer
from .sequence_scoring import (
    Activation,
    SequenceScorer,
    activation,
    apply_activation,
    context_limit,
    is_sequence_classifier,
    label_names,
    load_engine,
    num_labels,
    read_config,
)

logger = logging.getLogger("ray.serve")


class ClassificationTask(SequenceScorer):
    def __init__(self, model_id: str, tokenizer, engine, *, labels: list[str], function: Activation,
                 max_input_tokens: int, max_batch_size: int, batch_wait_timeout_s: float):
        super().__init__(model_id, engine, max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s)
        self.tokenizer = tokenizer
        self.labels = labels
        self.function = function
        self.max_model_len = max_input_tokens  # ModelInfo reports it

    async def classify(self, request: ClassificationRequest) -> ClassificationResponse:
        texts = request.inputs()
        token_lists = self.tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
        for index, ids in enumerate(token_lists):
            if len(ids) > self.max_model_len:
                raise ContextLengthExceededError(
                    f"input[{index}] has {len(ids)} tokens; model '{self.model_id}' accepts at most "
                    f"{self.max_model_len} tokens per input.",
                    param="input",
                )
        check_request_tokens(request, sum(len(ids) for ids in token_lists), param="input")
        scores = apply_activation(await self.logits([Sequence.single(ids) for ids in token_lists]), self.function)
        tokens = [len(ids) for ids in token_lists]
        return ClassificationResponse(
            id=new_id("classify"), created=now(), model=self.model_id,
            data=[self._data(index, row.tolist()) for index, row in enumerate(scores)],
            usage=ClassificationUsage(prompt_tokens=sum(tokens), total_tokens=sum(tokens), input_tokens=tokens),
        )

    def _data(self, index: int, probs: list[float]) -> ClassificationData:
        ranked = sorted(range(len(probs)), key=lambda i: -probs[i])  # stable: ties keep label order
        return ClassificationData(
            index=index, label=self.labels[ranked[0]], probs=probs, num_classes=len(probs),
            scores=[LabelScore(label=self.labels[i], score=probs[i]) for i in ranked],
        )


def claims(config: dict, files: frozenset[str]) -> bool:
    """A ...ForSequenceClassification model with two or more labels (one output is a
    cross-encoder: the rerank task's)."""
    return is_sequence_classifier(config) and num_labels(config) >= 2


def load(model_id: str, args: ModelAppArgs, prepared, backend) -> ClassificationTask:
    config = read_config(prepared.hf_dir)
    tokenizer = load_tokenizer(prepared.hf_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    engine = load_engine(args, prepared, backend, pad_id)
    labels, function = label_names(config), activation(config)
    if engine.num_labels != len(labels):
        raise ValueError(f"{model_id}: config.json names {len(labels)} labels but the model has {engine.num_labels} outputs")
    limit = context_limit(prepared.hf_dir, tokenizer)
    logger.info("%s: %s classifier on %s, %d labels (%s), inputs up to %d tokens",
                model_id, engine.name, engine.device, len(labels), function, limit)
    return ClassificationTask(
        model_id, tokenizer, engine, labels=labels, function=function, max_input_tokens=limit,
        max_batch_size=args.effective_max_batch_size, batch_wait_timeout_s=args.effective_batch_wait_timeout_s,
    )


TASK = TaskSpec(
    name="text-classification",
    summary="sequence classification (/v1/classify): every label's score per input, batched across requests as the engine frees up",
    endpoints=("classify", "tokenize", "detokenize"),
    load=load,
    hf_task="text-classification",
    fields=frozenset({"encoder_streams"}),
    claims=claims,
    engines=(
        ("openvino", "OpenVINO runtime sequence classifier, batches on its streams"),
        ("transformers", "torch sequence classifier, one batch at a time"),
    ),
)
