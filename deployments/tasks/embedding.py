"""embedding: /v1/embeddings batched across concurrent requests (SlotBatcher), as many batches
at once as the engine runs (OpenVINO streams).

Batches are counted in inputs, not requests: 32 one-sentence requests and one 32-sentence
request both make one engine call of 32. A request with more inputs than ``max_batch_size``
takes turns with the other requests' inputs (slot_batching.py), and its tokens in all are
capped by the ingress's max_request_tokens (contract/model_api.py TokenBudget).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from contract.config import ModelAppArgs
from contract.embedding_protocol import (
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
)
from contract.engine import EmbeddingEngine
from contract.errors import ContextLengthExceededError, InvalidRequestError
from contract.model_api import EngineStats, check_request_tokens
from contract.tasks import TaskSpec
from contract.tokenize_protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from contract.vectors import encode_vector
from observability import catalogue

from .. import tokenization
from ..engines.encoders import OpenVINOEncoder, PoolingSpec, TorchEncoder
from ..model_files import context_length, load_tokenizer
from ..serving_metrics import ReplicaMeter
from ..slot_batching import SlotBatcher
from ..token_ids import check_in_vocabulary

logger = logging.getLogger("ray.serve")


class EmbeddingTask:
    max_model_len = None  # ModelInfo reports the vectors' size instead

    def __init__(
        self,
        model_id: str,
        tokenizer,
        engine: EmbeddingEngine,
        *,
        max_input_tokens: int,
        supports_dimensions: bool,
        max_batch_size: int,
        batch_wait_timeout_s: float,
    ):
        self.model_id = model_id
        self.tokenizer = tokenizer
        self.engine = engine
        self.embedding_dimensions = engine.dimensions
        self.max_input_tokens = max_input_tokens
        self.supports_dimensions = supports_dimensions
        self.max_batch_size = max_batch_size
        # As many batches at once as the engine runs (OpenVINO streams), each formed when one
        # can start (deployments/slot_batching.py says why not @serve.batch).
        self._batcher = SlotBatcher(engine.encode, max_batch_size=max_batch_size, wait_s=batch_wait_timeout_s,
                                    slots=engine.concurrency, on_batch=self._observe_batch)
        self._prefix, self._suffix = special_token_wrapper(tokenizer)
        self._vocab_size = len(tokenizer)
        self._requests = 0
        self._inputs = 0
        self._meter: ReplicaMeter | None = None
        self._on_batch: Callable[[int], None] | None = None

    def attach_meter(self, meter: ReplicaMeter) -> None:
        """Record the batch sizes and the tokens embedded through `meter`."""
        self._meter = meter
        self._on_batch = meter.batch_observer("serve_batch")

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        dims = self._check_dimensions(request.dimensions)
        token_lists = self._tokenize_all(request.inputs())
        tokens = sum(len(ids) for ids in token_lists)
        check_request_tokens(request, tokens, param="input")
        vectors = await self._batcher.run(token_lists)
        if dims is not None and dims < vectors.shape[1]:
            vectors = vectors[:, :dims]
            if self.engine.spec.normalize:
                vectors = vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
        self._requests += 1
        self._inputs += len(token_lists)
        if self._meter is not None:
            self._meter.metrics.inc(catalogue.PROMPT_TOKENS, tokens, model=self.model_id)
        return EmbeddingResponse(
            data=[
                EmbeddingData(index=i, embedding=encode_vector(vector, request.encoding_format))
                for i, vector in enumerate(vectors)
            ],
            model=self.model_id,
            usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens, input_tokens=[len(ids) for ids in token_lists]),
        )

    async def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        return tokenization.tokenize(self.tokenizer, request, self.max_input_tokens, self.model_id)

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

    # ------------------------------------------------------------------ validation

    def _check_dimensions(self, dims: int | None) -> int | None:
        if dims is None or dims == self.engine.dimensions:
            return None
        if not self.supports_dimensions:
            raise InvalidRequestError(
                f"Model '{self.model_id}' does not support the dimensions parameter "
                f"(its vectors have {self.engine.dimensions} dimensions).",
                param="dimensions",
            )
        if dims > self.engine.dimensions:
            raise InvalidRequestError(
                f"dimensions must be at most {self.engine.dimensions} for model '{self.model_id}'.",
                param="dimensions",
            )
        return dims

    def _tokenize_all(self, items: list[str | list[int]]) -> list[list[int]]:
        texts = [item for item in items if isinstance(item, str)]
        # One call for all strings: the Rust tokenizer encodes a batch in parallel.
        encoded = iter(self.tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"] if texts else [])
        out = []
        for index, item in enumerate(items):
            if isinstance(item, str):
                ids = next(encoded)
            else:
                check_in_vocabulary(item, self._vocab_size, where=f"input[{index}]", param="input")
                # Token ids stand for the text's tokens, as with OpenAI: add the model's special
                # tokens so that ids and the text they encode give the same vector.
                ids = self._prefix + list(item) + self._suffix
            if len(ids) > self.max_input_tokens:
                raise ContextLengthExceededError(
                    f"input[{index}] has {len(ids)} tokens; model '{self.model_id}' accepts at most "
                    f"{self.max_input_tokens} tokens per input.",
                    param="input",
                )
            out.append(ids)
        return out


def special_token_wrapper(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text, e.g. [CLS] / [SEP]."""
    probe = "hello"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    wrapped = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(wrapped) - len(plain) + 1):
        if wrapped[start : start + len(plain)] == plain:
            return wrapped[:start], wrapped[start + len(plain) :]
    return [], []


# Files sentence-transformers writes next to the weights; any one marks an embedding model.
SENTENCE_TRANSFORMERS_FILES = frozenset({"modules.json", "config_sentence_transformers.json", "sentence_bert_config.json"})
# Heads that make a model something other than an encoder of sentences.
_NOT_BARE = ("LMHeadModel", "PreTrainedModel")


def claims(config: dict, files: frozenset[str]) -> bool:
    """A sentence-transformers model, or a bare encoder (BertModel, XLMRobertaModel, ...: an
    architecture named ...Model, without a For... head). Never a ...ForSequenceClassification
    model: that is a cross-encoder or a classifier, even when sentence-transformers saved it."""
    architectures = [str(name) for name in config.get("architectures") or []]
    if any(name.endswith("ForSequenceClassification") for name in architectures):
        return False
    if files & SENTENCE_TRANSFORMERS_FILES:
        return True
    return bool(architectures) and all(
        name.endswith("Model") and not re.search(r"For[A-Z]", name) and not name.endswith(_NOT_BARE)
        for name in architectures
    )


def load(model_id: str, args: ModelAppArgs, prepared, backend) -> EmbeddingTask:
    tokenizer = load_tokenizer(prepared.hf_dir)
    spec = PoolingSpec.from_model_dir(Path(prepared.hf_dir))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    limit = args.max_input_tokens or spec.max_seq_length or context_length(prepared.hf_dir, default=512)
    if backend.backend == "openvino":
        engine = OpenVINOEncoder(
            prepared.openvino_dir, spec, pad_id, num_threads=args.num_threads, device=backend.device.upper(),
            streams=None if args.encoder_streams == "auto" else args.encoder_streams,
        )
    elif backend.backend == "vllm":
        from ..engines.vllm_encoder import VLLMEncoder
        from ..engines.vllm_generation import assigned_gpu_share

        engine = VLLMEncoder(prepared.hf_dir, spec, device=backend.device, dtype=backend.dtype, max_model_len=limit,
                             gpu_memory_utilization=assigned_gpu_share() if backend.device == "cuda" else None)
    else:
        engine = TorchEncoder(
            prepared.hf_dir, spec, pad_id, device=backend.device, dtype=backend.dtype, num_threads=args.num_threads
        )
    logger.info(
        "%s: %s encoder on %s, %d dims, %s pooling, inputs up to %d tokens, %d batch(es) at once",
        model_id, engine.name, engine.device, engine.dimensions, spec.mode, limit, engine.concurrency,
    )
    return EmbeddingTask(
        model_id,
        tokenizer,
        engine,
        max_input_tokens=limit,
        supports_dimensions=args.supports_dimensions,
        max_batch_size=args.effective_max_batch_size,
        batch_wait_timeout_s=args.effective_batch_wait_timeout_s,
    )


TASK = TaskSpec(
    name="embedding",
    summary="sentence embeddings (/v1/embeddings), batched across requests as the engine frees up",
    endpoints=("embed", "tokenize", "detokenize"),
    load=load,
    fields=frozenset({"supports_dimensions", "max_input_tokens", "encoder_streams"}),
    claims=claims,
    engines=(
        ("openvino", "OpenVINO runtime encoder, batches on its streams"),
        ("transformers", "torch encoder, one batch at a time"),
        ("vllm", "vLLM's pooling runner, where vLLM supports the model (mean, cls or last-token pooling)"),
    ),
)
