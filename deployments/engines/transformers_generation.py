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

from contract.engine import SamplingParams, TokenDelta
from contract.model_api import EngineStats

logger = logging.getLogger("ray.serve")


@dataclass
class _Job:
    prompt_ids: list[int]
    params: SamplingParams
    cancelled: bool = False
    generated: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    reported_end: bool = False


class TransformersGenerationEngine:
    name = "transformers"

    def __init__(
        self,
        hf_dir: Path,
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
            generators = [self._row_generator(job.params) for job in jobs]
            logits, cache, mask, positions = await asyncio.to_thread(self._prefill, jobs)
            while True:
                next_tokens = self._sample(logits, jobs, generators)
                if self.on_step is not None:
                    self.on_step(sum(1 for job in jobs if not job.reported_end))  # rows still generating
                out: list = []
                for job, token in zip(jobs, next_tokens, strict=True):
                    out.append(self._advance(job, token))
                yield out
                if all(job.reported_end for job in jobs):
                    return
                step_tokens = torch.tensor([[t] for t in next_tokens], device=self.device)
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                positions = positions + 1
                logits, cache = await asyncio.to_thread(self._decode, step_tokens, mask, positions, cache)
        finally:
            self._running -= len(jobs)

    def _advance(self, job: _Job, token: int):
        """This step's result for one row: a delta, or StopIteration once the row ended."""
        if job.reported_end:
            return StopIteration
        if job.cancelled:
            job.reported_end = True
            self._cancelled_total += 1
            return StopIteration
        job.generated.append(token)
        self._generated_total += 1
        if token in self._eos or token in job.params.stop_token_ids:
            job.finish_reason = "stop"
        elif len(job.generated) >= job.params.max_tokens:
            job.finish_reason = "length"
        if job.finish_reason is not None:
            job.reported_end = True
            self._finished_total += 1
        return TokenDelta([token], job.finish_reason)

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

    def _row_generator(self, params: SamplingParams):
        if params.greedy:
            return None
        generator = self._torch.Generator(device=self.device)
        generator.manual_seed(params.seed if params.seed is not None else random.getrandbits(63))
        return generator

    def _sample(self, logits, jobs: list[_Job], generators) -> list[int]:
        torch = self._torch
        tokens: list[int] = []
        for row, job in enumerate(jobs):
            if job.reported_end:
                tokens.append(self._pad_id)
                continue
            row_logits = logits[row]
            params = job.params
            if job.generated and (params.presence_penalty or params.frequency_penalty):
                # OpenAI semantics: penalties count the tokens generated so far.
                counts = torch.bincount(
                    torch.tensor(job.generated, device=row_logits.device), minlength=row_logits.shape[-1]
                )[: row_logits.shape[-1]].to(row_logits.dtype)
                row_logits = row_logits - params.frequency_penalty * counts - params.presence_penalty * (counts > 0)
            if params.greedy:
                tokens.append(int(torch.argmax(row_logits)))
                continue
            probs = torch.softmax(row_logits / params.temperature, dim=-1)
            if params.top_p < 1.0:
                sorted_probs, order = torch.sort(probs, descending=True)
                keep = sorted_probs.cumsum(dim=-1) - sorted_probs < params.top_p  # always keeps the top token
                sorted_probs = sorted_probs * keep
                probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
            tokens.append(int(torch.multinomial(probs, 1, generator=generators[row])))
        return tokens
