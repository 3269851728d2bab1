"""Generation on transformers (CPU without OpenVINO, CUDA, MPS) with the library's continuous
batching (`ContinuousBatchingManager`): a paged KV cache, requests that join and leave at every
step, prompts prefilled in chunks of the step's token budget, in the manager's own thread.

The manager has one generation config for all its requests, so each request's `RowSampler`
(logit_bias, penalties, min_tokens, a grammar's mask, its seeded draw, log-probabilities) picks
its token in the manager's logits processor (`RequestRows`) and leaves only that token for the
manager's argmax.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from contract.engine import SamplingParams, TokenDelta, TokenLogprob
from contract.logprobs import MAX_TOP_LOGPROBS
from contract.model_api import EngineStats

from ..grammars import GrammarCompiler
from .row_sampler import RowSampler

logger = logging.getLogger("ray.serve")

BLOCK_SIZE = 64  # tokens per KV-cache block: the library's 256 wastes most of a block on short chats


@dataclass
class _Request:
    prompt_ids: list[int]
    sampler: RowSampler
    generated: list[int] = field(default_factory=list)  # as the processor picked them (manager's thread)
    logprobs: deque[TokenLogprob] = field(default_factory=deque)
    error: Exception | None = None


class RequestRows:
    """The manager's logits processor. Its logits are the step's query tokens flattened; the row
    of a request that gets a token this step is the position the manager's inputs record for it
    (`req_id_to_new_token_position`). Rows of prompts still prefilling are left alone."""

    def __init__(self, positions: Callable[[], dict[str, int]], requests: dict[str, _Request],
                 forget: Callable[[str], None], on_rows: Callable[[int], None]):
        self._positions = positions
        self._requests = requests
        self._forget = forget
        self._on_rows = on_rows
        self.cancelled: set[str] = set()  # added from the event loop
        self._forgetting: set[str] = set()

    def set_continuous_batching_context(self, logits_indices, cu_seq_lens_q) -> None:
        return None  # the rows are read by request id instead (see the class docstring)

    def __call__(self, input_ids, scores):
        # A request cancelled before the previous step was cleared before this one: no output of
        # it can come any more, so its result handler goes (the manager drops it only on a finish).
        for request_id in self._forgetting:
            self._forget(request_id)
        self._forgetting, self.cancelled = self.cancelled, set()
        positions = self._positions()
        for request_id, position in positions.items():
            request = self._requests.get(request_id)
            if request is None or request.error is not None:
                continue  # cancelled, or failed: its token is never delivered
            row = scores[position]
            try:
                token = request.sampler.next_token(row, request.prompt_ids, request.generated)
                if request.sampler.params.logprobs is not None:
                    request.logprobs.append(request.sampler.logprobs(row, token))
            except Exception as exc:  # noqa: BLE001 - one request's failure (its grammar) is its own
                request.error = exc
                continue
            request.generated.append(token)
            row.fill_(-math.inf)
            row[token] = 0.0
        self._on_rows(len(positions))
        return scores


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
        max_num_seqs: int = 64,
        max_num_batched_tokens: int = 256,
        kv_cache_gb: float = 1.0,
        max_model_len: int = 2048,
        num_threads: int | None = None,
    ):
        import torch
        from transformers import AutoModelForCausalLM, GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        torch.set_num_threads(num_threads or os.cpu_count() or 1)
        self._torch = torch
        self.device = device
        self._model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=getattr(torch, dtype)).to(device).eval()
        self._eos = set(eos_token_ids)
        self._tokenizer = tokenizer
        self._grammars: GrammarCompiler | None = None  # built with the first constrained request
        self._requests: dict[str, _Request] = {}
        self._ids = itertools.count()
        self._seats = asyncio.Semaphore(max_num_seqs)
        self._waiting = 0  # requests waiting for one of the max_num_seqs seats
        self._loop: asyncio.AbstractEventLoop | None = None
        self.on_step: Callable[[int], None] | None = None  # hears each step's batch size (metrics)
        self._generated_total = 0
        self._cancelled_total = 0
        self._finished_total = 0
        config = self._model.config.get_text_config()
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        block_bytes = 2 * config.num_hidden_layers * kv_heads * head_dim * BLOCK_SIZE * self._model.dtype.itemsize
        # The KV cache is kv_cache_gb, as for the OpenVINO engine, but no more than max_num_seqs
        # whole contexts, and never less than one context plus a step's budget.
        per_context = -(-(max_model_len + max_num_batched_tokens) // BLOCK_SIZE)
        num_blocks = max(min(int(kv_cache_gb * 2**30 // block_bytes), max_num_seqs * per_context), per_context)
        # Sampling is greedy over what RequestRows left: one token per row. CUDA graphs and async
        # batching would replay or overlap the step without calling the processor in Python.
        self._manager = self._model.init_continuous_batching(
            generation_config=GenerationConfig(do_sample=False, max_new_tokens=max_model_len),
            continuous_batching_config=ContinuousBatchingConfig(
                block_size=BLOCK_SIZE, num_blocks=num_blocks, max_batch_tokens=max_num_batched_tokens,
                use_cuda_graph=False, use_async_batching=False, allow_block_sharing=True,
            ),
        )
        self._rows = RequestRows(self._positions, self._requests, self._forget, self._heard_rows)
        self._manager.logit_processor = self._rows
        self._manager.start()

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[TokenDelta]:
        self._loop = asyncio.get_running_loop()
        request_id = f"r{next(self._ids)}"
        outputs: asyncio.Queue = asyncio.Queue()
        stops = (set() if params.ignore_eos else self._eos) | set(params.stop_token_ids)
        finished = False
        self._waiting += 1
        try:
            await self._seats.acquire()
        finally:
            self._waiting -= 1
        added = False
        try:
            request = self._requests[request_id] = _Request(
                list(prompt_ids), RowSampler(self._torch, params, self._eos, self.device, self._mask(params)))
            self._manager.register_result_handler(request_id, outputs.put_nowait)
            self._manager.add_request(list(prompt_ids), request_id=request_id, max_new_tokens=params.max_tokens,
                                      streaming=True, eos_token_id=sorted(stops))
            added = True
            sent = 0
            while not finished:
                output = await outputs.get()
                if output.error is not None or request.error is not None:
                    raise request.error or RuntimeError(f"generation failed: {output.error}")
                # The manager's outputs share its token list: one handled late may already hold
                # the tokens of the next, which then brings none but the finish.
                tokens = output.generated_tokens
                new = tokens[sent:]
                finished = output.is_finished()
                if not new and not finished:
                    continue
                sent += len(new)
                self._generated_total += len(new)
                reason = None
                if finished:
                    reason = "stop" if tokens and tokens[-1] in stops else "length"
                    self._finished_total += 1
                logprobs = None
                if params.logprobs is not None:
                    logprobs = tuple(request.logprobs.popleft() for _ in new)
                yield TokenDelta(new, reason, logprobs)
        finally:
            self._seats.release()
            self._requests.pop(request_id, None)
            if added and not finished:
                self._cancelled_total += 1
                self._manager.cancel_request(request_id)
                self._rows.cancelled.add(request_id)

    def stats(self) -> EngineStats:
        processor = self._manager.batch_processor
        cache = processor.cache if processor is not None else None
        return EngineStats(
            running_requests=len(self._requests),
            waiting_requests=self._waiting,
            kv_cache_usage=None if cache is None else 1.0 - cache.get_num_free_blocks() / cache.num_blocks,
            generated_tokens_total=self._generated_total,
            cancelled_requests_total=self._cancelled_total,
            finished_requests_total=self._finished_total,
        )

    def running(self) -> int:
        return len(self._requests)

    def check_health(self) -> None:
        if not self._manager.is_running():
            raise RuntimeError("the transformers continuous-batching loop has stopped")

    def shutdown(self) -> None:
        for request_id in list(self._requests):  # the manager's loop runs on while requests are pending
            self._manager.cancel_request(request_id)
        self._manager.stop(block=True, timeout=10)

    # ------------------------------------------------------------------ the manager's thread

    def _positions(self) -> dict[str, int]:
        return self._manager.batch_processor.inputs_and_outputs.req_id_to_new_token_position

    def _forget(self, request_id: str) -> None:
        self._manager.output_router.result_handlers.pop(request_id, None)

    def _heard_rows(self, rows: int) -> None:
        if self.on_step is not None and self._loop is not None and rows:
            self._loop.call_soon_threadsafe(self.on_step, rows)

    def _mask(self, params: SamplingParams):
        if params.constraint is None:
            return None
        if self._grammars is None:
            self._grammars = GrammarCompiler(self._tokenizer, self._model.config.vocab_size, sorted(self._eos))
        return self._grammars.matcher(params.constraint)
