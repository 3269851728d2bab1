"""The contract between tasks and engines (deployments/engines implement it).

A generation engine takes prompt token ids and sampling parameters and yields token deltas
as an async iterator; closing the iterator (the consumer went away) cancels the sequence in
the engine. Non-streaming requests simply collect the deltas. Text (detokenisation, stop
strings, chat templates) is the task's business, so every engine shares that code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from .model_api import EngineStats
from .structured_outputs import Constraint

EngineFinish = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)
    top_k: int = 0  # 0: every token
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0  # before which EOS and stop_token_ids cannot be sampled
    ignore_eos: bool = False
    logit_bias: tuple[tuple[int, float], ...] = field(default_factory=tuple)
    constraint: Constraint | None = None
    # None: no log-probabilities; 0: each sampled token's own; k: and the k likeliest tokens'.
    logprobs: int | None = None

    @property
    def greedy(self) -> bool:
        # OpenAI treats temperature 0 as greedy decoding; tiny values would only make the
        # softmax overflow, so they are greedy too.
        return self.temperature < 1e-5


@dataclass(frozen=True)
class TokenLogprob:
    """A sampled token's log-probability in the model's own distribution: the log-softmax of its
    logits before temperature, penalties, bias or a constraint (vLLM's default, raw_logprobs).
    `top`: the likeliest tokens there as (token id, log-probability), likeliest first."""

    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class TokenDelta:
    """New tokens of one sequence; finish_reason is set on the last delta. `logprobs`, one per
    token id, when the sampling parameters asked for them."""

    token_ids: Sequence[int]
    finish_reason: EngineFinish | None = None
    logprobs: Sequence[TokenLogprob] | None = None


class GenerationEngine(Protocol):
    name: str
    device: str
    supports_logit_bias: bool
    supports_structured_output: bool
    max_top_logprobs: int  # the most alternatives per token it can give (SamplingParams.logprobs)

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[TokenDelta]: ...

    def stats(self) -> EngineStats: ...

    def running(self) -> int:
        """Sequences in flight now (cheap; called while streaming)."""
        ...

    def check_health(self) -> None:
        """Raise if the engine can no longer serve (Ray Serve then replaces the replica)."""

    def shutdown(self) -> None: ...


class Pooling(Protocol):
    """How token vectors become one vector (deployments.engines.encoders.PoolingSpec)."""

    mode: str  # mean | cls | max | lasttoken
    normalize: bool  # L2-normalised output, which `dimensions` truncation must keep


class EmbeddingEngine(Protocol):
    name: str
    device: str
    dimensions: int
    spec: Pooling
    concurrency: int  # batches encode() may run at once, from as many threads

    def encode(self, batch: list[list[int]]) -> np.ndarray:
        """Blocking: token-id lists (any lengths) -> float32 [len(batch), dimensions] after
        the model's pooling and normalisation."""
        ...
