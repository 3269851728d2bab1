"""Continuous batching on CPUs: openvino_genai.ContinuousBatchingPipeline.

One background thread owns the pipeline and calls ``step()`` while any sequence is alive;
each step schedules prefill chunks of newly arrived requests together with one decode
token of every running sequence (dynamic split-fuse), so a request that arrives
mid-generation starts decoding at the next step instead of waiting for the batch to drain.

The pipeline is fed pre-tokenised prompts: tokenisation and detokenisation stay with the HF
tokenizer in the task (openvino_tokenizers cannot convert every tokenizer we serve).

Threading: ``add_request`` is safe beside ``step`` (the pipeline queues new requests under
its own mutex), but the binding holds the GIL for a whole step, so everything else in the
replica pauses during one; tokens produced by a step are handed to the event loop in one
``call_soon_threadsafe`` to keep the work between steps small. Cancellation is queued and
applied by the step thread between steps.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from serve_app.errors import ContextLengthExceededError, InternalServerError
from serve_app.protocol import EngineStats

from .base import SamplingParams, TokenDelta

logger = logging.getLogger("ray.serve")


class EngineDeadError(InternalServerError):
    """The step loop crashed; the replica's health check fails and Serve replaces it."""


@dataclass
class _Sequence:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    handle: object = None
    finished: bool = False


class OpenVINOGenerationEngine:
    name = "openvino_genai"

    def __init__(
        self,
        ir_dir: Path,
        *,
        eos_token_ids: list[int],
        max_num_seqs: int = 64,
        max_num_batched_tokens: int = 256,
        kv_cache_gb: float = 1.0,
        num_threads: int | None = None,
        device: str = "CPU",
    ):
        import openvino as ov
        import openvino_genai as ov_genai

        self._ov_genai = ov_genai
        self._tensor = ov.Tensor
        self.device = device
        scheduler = ov_genai.SchedulerConfig()
        scheduler.cache_size = max(1, int(round(kv_cache_gb)))
        scheduler.max_num_seqs = max_num_seqs
        scheduler.max_num_batched_tokens = max_num_batched_tokens
        scheduler.dynamic_split_fuse = True
        scheduler.enable_prefix_caching = False
        properties = {"INFERENCE_NUM_THREADS": num_threads} if num_threads else {}
        self._pipe = ov_genai.ContinuousBatchingPipeline(str(ir_dir), scheduler, device, properties)
        self._eos = sorted(set(eos_token_ids))
        self._finish_map = {
            ov_genai.GenerationFinishReason.STOP: "stop",
            ov_genai.GenerationFinishReason.LENGTH: "length",
        }
        self._finished_statuses = {
            ov_genai.GenerationStatus.FINISHED,
            ov_genai.GenerationStatus.STOP,
            ov_genai.GenerationStatus.CANCEL,
        }
        self._ignored = ov_genai.GenerationStatus.IGNORED
        self._ids = itertools.count()
        self._cv = threading.Condition()
        self._active: dict[int, _Sequence] = {}
        self._to_cancel: list[int] = []
        self._stopping = False
        self._error: BaseException | None = None
        self._generated_total = 0
        self._cancelled_total = 0
        self._finished_total = 0
        self._thread = threading.Thread(target=self._step_loop, name="openvino-genai-steps", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[TokenDelta]:
        self._raise_if_dead()
        seq = _Sequence(loop=asyncio.get_running_loop())
        request_id = next(self._ids)
        config = self._generation_config(params)
        tensor = self._tensor(np.asarray([prompt_ids], dtype=np.int64))
        with self._cv:
            seq.handle = self._pipe.add_request(request_id, tensor, config)
            self._active[request_id] = seq
            self._cv.notify()
        try:
            while True:
                item = await seq.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            if not seq.finished:
                # The consumer left early (client disconnect, stop string): free the KV cache.
                with self._cv:
                    self._to_cancel.append(request_id)
                    self._cv.notify()

    def stats(self) -> EngineStats:
        metrics = self._pipe.get_metrics()
        with self._cv:
            running = len(self._active)
        return EngineStats(
            running_requests=running,
            waiting_requests=max(0, int(metrics.requests) - int(metrics.scheduled_requests)),
            generated_tokens_total=self._generated_total,
            cancelled_requests_total=self._cancelled_total,
            finished_requests_total=self._finished_total,
            kv_cache_usage=float(metrics.cache_usage) / 100.0,
        )

    def check_health(self) -> None:
        self._raise_if_dead()
        if not self._thread.is_alive():
            raise EngineDeadError("the OpenVINO step thread is not running")

    def shutdown(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout=10)

    # ------------------------------------------------------------------ internals

    def _raise_if_dead(self) -> None:
        if self._error is not None:
            raise EngineDeadError(f"generation engine failed: {self._error}")

    def _generation_config(self, params: SamplingParams):
        config = self._ov_genai.GenerationConfig()
        config.max_new_tokens = params.max_tokens
        stop_ids = set(self._eos) | set(params.stop_token_ids)
        if self._eos:
            config.eos_token_id = self._eos[0]
        config.stop_token_ids = stop_ids
        if params.greedy:
            config.do_sample = False
        else:
            config.do_sample = True
            config.temperature = params.temperature
            config.top_p = params.top_p
        # The pipeline's default seed is 0 for every request, which would make every
        # unseeded sample identical; draw one per request unless the client chose it.
        config.rng_seed = params.seed if params.seed is not None else random.getrandbits(63)
        config.presence_penalty = params.presence_penalty
        config.frequency_penalty = params.frequency_penalty
        return config

    def _step_loop(self) -> None:
        while True:
            with self._cv:
                while not self._active and not self._to_cancel and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
                cancels, self._to_cancel = self._to_cancel, []
                for request_id in cancels:
                    seq = self._active.pop(request_id, None)
                    if seq is not None:
                        seq.handle.cancel()
                        self._cancelled_total += 1
                if not self._active:
                    continue
            try:
                self._pipe.step()
            except BaseException as exc:  # noqa: BLE001 - every waiter must hear about it
                logger.exception("OpenVINO pipeline step failed")
                self._error = exc
                self._fail_all(EngineDeadError(f"generation engine failed: {exc}"))
                return
            self._collect()

    def _collect(self) -> None:
        deliveries: list[tuple[_Sequence, object]] = []
        with self._cv:
            for request_id, seq in list(self._active.items()):
                handle = seq.handle
                new_ids: list[int] = []
                finish = None
                while handle.can_read():
                    for output in handle.read().values():
                        new_ids.extend(output.generated_ids)
                        finish = self._finish_map.get(output.finish_reason, finish)
                status = handle.get_status()
                if status == self._ignored:
                    del self._active[request_id]
                    seq.finished = True
                    deliveries.append(
                        (seq, ContextLengthExceededError("the prompt does not fit in the engine's KV cache", param="messages"))
                    )
                    continue
                done = status in self._finished_statuses
                if done and finish is None:
                    finish = "stop"
                if new_ids or done:
                    self._generated_total += len(new_ids)
                    deliveries.append((seq, TokenDelta(new_ids, finish if done else None)))
                if done:
                    del self._active[request_id]
                    seq.finished = True
                    self._finished_total += 1
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for seq, item in deliveries:
            by_loop.setdefault(seq.loop, []).append((seq, item))
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(_deliver, items)

    def _fail_all(self, error: BaseException) -> None:
        with self._cv:
            sequences = list(self._active.values())
            self._active.clear()
        for seq in sequences:
            seq.finished = True
            seq.loop.call_soon_threadsafe(seq.queue.put_nowait, error)


def _deliver(deliveries: list[tuple[_Sequence, object]]) -> None:
    for seq, item in deliveries:
        seq.queue.put_nowait(item)
