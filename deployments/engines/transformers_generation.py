"""Generation fallback: transformers on torch (CPU without OpenVINO, CUDA, MPS), batched
across concurrent requests with @serve.batch.

Requests that arrive within ``batch_wait_timeout_s`` of each other are decoded together:
one left-padded prefill, then one token per sequence per step with a shared KV cache. This
is static batching: a request arriving mid-batch waits for the next batch (the OpenVINO
engine is the one with continuous batching). Each row samples with its own parameters and
seeded generator, so a batch mixes greedy and sampled requests freely. Model steps run in a
worker thread so the replica's event loop keeps streaming while the model computes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from ray import serve

from contract.engine import SamplingParams, TokenDelta, TokenLogprob
from contract.logprobs import MAX_TOP_LOGPROBS
from contract.model_api import EngineStats

from ..grammars import GrammarCompiler, TokenMask

logger = logging.getLogger("ray.serve")


@dataclass
class _Job:
    prompt_ids: list[int]
    params: SamplingParams
    cancelled: bool = False
    generated: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    reported_end: bool = False


class RowSampler:
    """One sequence's next token from its logits, in vLLM's order: logit_bias; EOS and the stop
    ids held back until min_tokens; repetition, presence and frequency penalties; then greedy,
    or transformers' temperature, top-k, top-p and min-p warpers and a seeded draw. Log-probabilities,
    when asked, are read from the row as the model gave it (vLLM's raw_logprobs)."""

    def __init__(self, torch, params: SamplingParams, eos: set[int], device: str, mask: TokenMask | None = None):
        from transformers.generation.logits_process import (
            LogitsProcessorList,
            MinPLogitsWarper,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        self._torch, self.params, self._device, self.mask = torch, params, device, mask
        self._bias = [(torch.tensor([t for t, _ in params.logit_bias], device=device),
                       torch.tensor([b for _, b in params.logit_bias], device=device))] if params.logit_bias else []
        held = (set() if params.ignore_eos else eos) | set(params.stop_token_ids)
        self._held = torch.tensor(sorted(held), device=device) if params.min_tokens and held else None
        self._repetition = (RepetitionPenaltyLogitsProcessor(params.repetition_penalty)
                            if params.repetition_penalty != 1.0 else None)
        warpers = LogitsProcessorList()
        if not params.greedy:
            warpers.append(TemperatureLogitsWarper(params.temperature))
            if params.top_k > 0:
                warpers.append(TopKLogitsWarper(params.top_k))
            if params.top_p < 1.0:
                warpers.append(TopPLogitsWarper(params.top_p))
            if params.min_p > 0.0:
                warpers.append(MinPLogitsWarper(params.min_p))
        self._warpers = warpers
        self._generator = None
        if not params.greedy:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(params.seed if params.seed is not None else random.getrandbits(63))

    def next_token(self, logits, prompt_ids: list[int], generated: list[int]) -> int:
        torch, params = self._torch, self.params
        logits = logits.clone()
        if self.mask is not None:  # first, as vLLM applies it: what the constraint forbids is out
            self.mask.apply(logits)
        for ids, biases in self._bias:
            logits[ids] += biases
        if self._held is not None and len(generated) < params.min_tokens:
            logits[self._held] = -float("inf")
        seen = torch.tensor([prompt_ids + generated], device=self._device)  # what the processors read
        if self._repetition is not None:  # the prompt's tokens count too, as in vLLM and transformers
            logits = self._repetition(seen, logits[None])[0]
        if generated and (params.presence_penalty or params.frequency_penalty):
            # OpenAI semantics: these penalties count the tokens generated so far.
            counts = torch.bincount(torch.tensor(generated, device=logits.device), minlength=logits.shape[-1])[
                : logits.shape[-1]].to(logits.dtype)
            logits = logits - params.frequency_penalty * counts - params.presence_penalty * (counts > 0)
        if params.greedy:
            token = int(torch.argmax(logits))
        else:
            logits = self._warpers(seen, logits[None])[0]
            token = int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=self._generator))
        if self.mask is not None:
            self.mask.accept(token)
        return token

    def logprobs(self, logits, token: int) -> TokenLogprob:
        """`token`'s log-probability in the model's row `logits` (before next_token's changes), and
        the params.logprobs likeliest tokens'."""
        logprobs = self._torch.log_softmax(logits.float(), dim=-1)
        top: tuple[tuple[int, float], ...] = ()
        if self.params.logprobs:
            values, ids = self._torch.topk(logprobs, min(self.params.logprobs, logprobs.shape[-1]))
            top = tuple(zip(ids.tolist(), values.tolist(), strict=True))
        return TokenLogprob(float(logprobs[token]), top)


class TransformersGenerationEngine:
    name = "transformers"
    supports_logit_bias = True
    supports_structured_output = True  # xgrammar masks the logits
    max_top_logprobs = MAX_TOP_LOGPROBS
    why_unstructured = ""

    def __init__(
        self,
        hf_dir: Path,
        tokenizer,
        *,
        eos_token_ids: list[int],
        device: str = "cpu",
        dtype: str = "float32",
        max_batch_size: int = 16,
        batch_wait_timeout_s: float = 0.01,
        num_threads: int | None = None,
    ):
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(num_threads or os.cpu_count() or 1)
        self._torch = torch
        self.device = device
        self._model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=getattr(torch, dtype)).to(device).eval()
        self._eos = set(eos_token_ids)
        self._tokenizer = tokenizer
        self._grammars: GrammarCompiler | None = None  # built with the first constrained request
        self._pad_id = min(self._eos) if self._eos else 0
        self._generate_batch.set_max_batch_size(max_batch_size)
        self._generate_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self._running = 0
        self.on_step: Callable[[int], None] | None = None  # hears each step's batch size (metrics)
        self._generated_total = 0
        self._cancelled_total = 0
        self._finished_total = 0

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[TokenDelta]:
        job = _Job(list(prompt_ids), params)
        stream = self._generate_batch(job)
        try:
            async for delta in stream:
                yield delta
                if delta.finish_reason is not None:
                    return
        finally:
            if job.finish_reason is None:
                job.cancelled = True  # the batch loop drops the row at its next step
            await stream.aclose()

    def stats(self) -> EngineStats:
        return EngineStats(
            running_requests=self._running,
            generated_tokens_total=self._generated_total,
            cancelled_requests_total=self._cancelled_total,
            finished_requests_total=self._finished_total,
        )

    def running(self) -> int:
        return self._running

    def check_health(self) -> None:
        return None

    def shutdown(self) -> None:
        return None

    # ------------------------------------------------------------------ batch loop

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _generate_batch(self, jobs: list[_Job]) -> AsyncIterator[list]:
        torch = self._torch
        self._running += len(jobs)
        try:
            samplers = [RowSampler(torch, job.params, self._eos, self.device, self._mask(job.params)) for job in jobs]
            logits, cache, mask, positions = await asyncio.to_thread(self._prefill, jobs)
            while True:
                next_tokens, logprobs = self._sample(logits, jobs, samplers)
                if self.on_step is not None:
                    self.on_step(sum(1 for job in jobs if not job.reported_end))  # rows still generating
                out: list = []
                for job, token, logprob in zip(jobs, next_tokens, logprobs, strict=True):
                    out.append(self._advance(job, token, logprob))
                yield out
                if all(job.reported_end for job in jobs):
                    return
                step_tokens = torch.tensor([[t] for t in next_tokens], device=self.device)
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                positions = positions + 1
                logits, cache = await asyncio.to_thread(self._decode, step_tokens, mask, positions, cache)
        finally:
            self._running -= len(jobs)

    def _mask(self, params: SamplingParams) -> TokenMask | None:
        if params.constraint is None:
            return None
        if self._grammars is None:
            self._grammars = GrammarCompiler(self._tokenizer, self._model.config.vocab_size, sorted(self._eos))
        return self._grammars.matcher(params.constraint)

    def _advance(self, job: _Job, token: int, logprob: TokenLogprob | None):
        """This step's result for one row: a delta, or StopIteration once the row ended."""
        if job.reported_end:
            return StopIteration
        if job.cancelled:
            job.reported_end = True
            self._cancelled_total += 1
            return StopIteration
        job.generated.append(token)
        self._generated_total += 1
        if (token in self._eos and not job.params.ignore_eos) or token in job.params.stop_token_ids:
            job.finish_reason = "stop"
        elif len(job.generated) >= job.params.max_tokens:
            job.finish_reason = "length"
        if job.finish_reason is not None:
            job.reported_end = True
            self._finished_total += 1
        return TokenDelta([token], job.finish_reason, None if logprob is None else (logprob,))

    def _prefill(self, jobs: list[_Job]):
        torch = self._torch
        width = max(len(job.prompt_ids) for job in jobs)
        ids = torch.full((len(jobs), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for row, job in enumerate(jobs):  # left padding keeps every row's last token aligned
            ids[row, width - len(job.prompt_ids) :] = torch.tensor(job.prompt_ids)
            mask[row, width - len(job.prompt_ids) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        with torch.inference_mode():
            out = self._model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        return out.logits[:, -1, :].float(), out.past_key_values, mask, positions[:, -1:]

    def _decode(self, tokens, mask, positions, cache):
        with self._torch.inference_mode():
            out = self._model(
                input_ids=tokens, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True
            )
        return out.logits[:, -1, :].float(), out.past_key_values

    def _sample(self, logits, jobs: list[_Job], samplers: list[RowSampler]):
        """Each row's next token, and its TokenLogprob where the row's request asked for one."""
        tokens: list[int] = []
        logprobs: list[TokenLogprob | None] = []
        for row, (job, sampler) in enumerate(zip(jobs, samplers, strict=True)):
            token = self._pad_id if job.reported_end else sampler.next_token(logits[row], job.prompt_ids, job.generated)
            tokens.append(token)
            wanted = not job.reported_end and job.params.logprobs is not None
            logprobs.append(sampler.logprobs(logits[row], token) if wanted else None)
        return tokens, logprobs
