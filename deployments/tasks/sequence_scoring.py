"""What the rerank and text-classification tasks share: a sequence-classification model (its
config, the engine for this node's backend, its context) and the logits of many sequences,
batched across concurrent requests as the embedding task batches its inputs: a `SlotBatcher`
forms a batch when one of the engine's streams is free (deployments/slot_batching.py says why
not @serve.batch), and `encoder_streams` sets how many run at once.

Batches are counted in sequences, not requests, as embeddings count inputs: a request with more
sequences than ``max_batch_size`` takes turns with the other requests' sequences. Not a task
module itself: it defines no TASK.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from contract.config import ModelAppArgs
from contract.model_api import EngineStats
from contract.tokenize_protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from observability import catalogue

from .. import tokenization
from ..engines.classifiers import OpenVINOClassifier, Sequence, TorchClassifier
from ..model_files import context_length
from ..serving_metrics import ReplicaMeter
from ..slot_batching import SlotBatcher

Activation = Literal["sigmoid", "softmax", "none"]
# What transformers' tokenizers report as model_max_length when the model sets none.
UNSET_MODEL_MAX_LENGTH = 1_000_000


# ----------------------------------------------------------------------------- the model's config


def is_sequence_classifier(config: dict[str, Any]) -> bool:
    return any(str(arch).endswith("ForSequenceClassification") for arch in config.get("architectures") or [])


def num_labels(config: dict[str, Any]) -> int:
    """As transformers' PretrainedConfig reads it: id2label's size, else num_labels, else 2."""
    if config.get("id2label"):
        return len(config["id2label"])
    return int(config.get("num_labels", 2))


def label_names(config: dict[str, Any]) -> list[str]:
    """The labels in class order (LABEL_i where id2label names none, as transformers does)."""
    id2label = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}
    return [id2label.get(i, f"LABEL_{i}") for i in range(num_labels(config))]


def activation(config: dict[str, Any]) -> Activation:
    """What turns logits into scores, as transformers' text-classification pipeline decides:
    none for regression, sigmoid for multi-label or one output, softmax otherwise."""
    problem = config.get("problem_type")
    if problem == "regression":
        return "none"
    if problem == "multi_label_classification" or num_labels(config) == 1:
        return "sigmoid"
    return "softmax"


def apply_activation(logits: np.ndarray, function: Activation) -> np.ndarray:
    logits = logits.astype(np.float64)  # float64: the scores agree with the pipeline's to ~1e-7
    if function == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    if function == "softmax":
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)
    return logits


def read_config(hf_dir: Path) -> dict[str, Any]:
    return json.loads((Path(hf_dir) / "config.json").read_text())


def context_limit(hf_dir: Path, tokenizer) -> int:
    """The most tokens a sequence may have: the model's positions, or the tokenizer's
    model_max_length where that is lower (XLM-R has 514 positions but takes 512 tokens)."""
    limit = context_length(hf_dir, default=512)
    declared = getattr(tokenizer, "model_max_length", None)
    if isinstance(declared, int) and 0 < declared < UNSET_MODEL_MAX_LENGTH:
        limit = min(limit, declared)
    return limit


def load_engine(args: ModelAppArgs, prepared, backend, pad_id: int) -> OpenVINOClassifier | TorchClassifier:
    if backend.backend == "openvino":
        # fp32 weights (the default) compute in f32 too; fp16 and int8 trade exact scores for speed.
        return OpenVINOClassifier(prepared.openvino_dir, pad_id, num_threads=args.num_threads,
                                  device=backend.device.upper(), exact=args.weight_format == "fp32",
                                  streams=None if args.encoder_streams == "auto" else args.encoder_streams)
    return TorchClassifier(prepared.hf_dir, pad_id, device=backend.device, dtype=backend.dtype, num_threads=args.num_threads)


# ----------------------------------------------------------------------------- batching


class SequenceScorer:
    """The task side of a sequence-classification engine: the logits of any number of
    sequences, batched with those of concurrent requests; and what ModelServer asks of a task."""

    def __init__(self, model_id: str, engine, *, max_batch_size: int, batch_wait_timeout_s: float):
        self.model_id = model_id
        self.engine = engine
        self.max_batch_size = max_batch_size
        # As many batches at once as the engine runs (OpenVINO streams); `self.engine` is read
        # per batch, so a wrapped or replaced engine is the one that runs.
        self._batcher = SlotBatcher(lambda batch: self.engine.logits(batch), max_batch_size=max_batch_size,
                                    wait_s=batch_wait_timeout_s, slots=engine.concurrency, on_batch=self._observe_batch)
        self._requests = 0
        self._meter: ReplicaMeter | None = None
        self._on_batch: Callable[[int], None] | None = None

    def attach_meter(self, meter: ReplicaMeter) -> None:
        """Record the batch sizes and the tokens scored through `meter`."""
        self._meter = meter
        self._on_batch = meter.batch_observer("serve_batch")

    async def logits(self, sequences: list[Sequence]) -> np.ndarray:
        rows = await self._batcher.run(sequences)
        self._requests += 1
        if self._meter is not None:
            self._meter.metrics.inc(catalogue.PROMPT_TOKENS, sum(len(seq.ids) for seq in sequences), model=self.model_id)
        return rows

    # The subclass sets `tokenizer` and `max_model_len`.
    async def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        return tokenization.tokenize(self.tokenizer, request, self.max_model_len, self.model_id)

    async def detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse:
        return tokenization.detokenize(self.tokenizer, request)

    def _observe_batch(self, size: int) -> None:
        if self._on_batch is not None:
            self._on_batch(size)

    def stats(self) -> EngineStats:
        return EngineStats(finished_requests_total=self._requests)

    def check_health(self) -> None:
        return None

    def shutdown(self) -> None:
        return None
