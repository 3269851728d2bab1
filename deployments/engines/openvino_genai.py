"""Continuous batching on CPUs: openvino_genai.ContinuousBatchingPipeline, replica side.

The pipeline runs in an engine-core process of its own (openvino_core.py says why) whose every
``step()`` prefills new requests' chunks beside one decode token of each running sequence, so a
request that arrives mid-generation starts at the next step. This side sends requests and
cancellations; a reader thread blocks on the socket without the GIL and hands each step's tokens
to the event loop in one call. Prompts arrive tokenised: the task's HF tokenizer does that both
ways (openvino_tokenizers cannot convert every tokenizer we serve).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import itertools
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from contract.engine import SamplingParams, TokenDelta, TokenLogprob
from contract.errors import ContextLengthExceededError, InvalidRequestError, ServiceUnavailableError
from contract.model_api import EngineStats

logger = logging.getLogger("ray.serve")


class EngineDeadError(ServiceUnavailableError):
    """The engine core failed or exited: a 503 the breaker counts; the health check fails and
    Serve replaces the replica."""

    def __init__(self, message: str):
        super().__init__(message, code="model_unavailable", retry_after_s=5)


@dataclass
class _Sequence:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    finished: bool = False


def add_openvino_tokenizer(ir_dir: Path, tokenizer) -> str:
    """The model's tokenizer as OpenVINO models beside the IR, converted once (the pipeline's
    structured output reads the vocabulary from them); "" once there, else why not."""
    if all((ir_dir / f"{name}.xml").exists() for name in _TOKENIZER_MODELS):
        return ""
    try:
        import openvino as ov
        from openvino_tokenizers import convert_tokenizer

        try:
            models = convert_tokenizer(tokenizer, with_detokenizer=True)
        except Exception:  # noqa: BLE001 - one known cause has a fix; anything else is reported below
            models = convert_tokenizer(_byte_level_decoding(tokenizer), with_detokenizer=True)
        with tempfile.TemporaryDirectory(dir=ir_dir) as scratch:  # another replica may convert at once
            for name, model in zip(_TOKENIZER_MODELS, models, strict=True):
                ov.save_model(model, str(Path(scratch) / f"{name}.xml"))
            for name in _TOKENIZER_MODELS:  # the weights first: a reader that sees the .xml finds its .bin
                os.replace(Path(scratch) / f"{name}.bin", ir_dir / f"{name}.bin")
                os.replace(Path(scratch) / f"{name}.xml", ir_dir / f"{name}.xml")
    except Exception as exc:  # noqa: BLE001 - many tokenizers have no OpenVINO conversion
        logger.warning("%s: no OpenVINO tokenizer (%s: %s); structured outputs are off for it", ir_dir.name,
                       type(exc).__name__, exc)
        return f"its tokenizer has no OpenVINO conversion ({type(exc).__name__}), which OpenVINO GenAI needs for them."
    return ""


_TOKENIZER_MODELS = ("openvino_tokenizer", "openvino_detokenizer")


def _byte_level_decoding(tokenizer):
    """The tokenizer with ByteLevel as its whole decoder. transformers' GGUF loader gives a
    byte-level BPE tokenizer (SmolLM2's) Llama's decoder chain, byte fallback first, which
    openvino_tokenizers cannot convert; over a byte-level vocabulary the other steps change
    nothing (SmolLM2: the same text for all but 4 of 49157 tokens, FIM markers the loader added)."""
    from tokenizers import decoders, pre_tokenizers

    backend = tokenizer.backend_tokenizer
    if not isinstance(backend.pre_tokenizer, pre_tokenizers.ByteLevel) or "ByteLevel" not in str(backend.decoder):
        raise ValueError(f"cannot convert a tokenizer with decoder {type(backend.decoder).__name__}")
    clone = copy.deepcopy(tokenizer)
    clone.backend_tokenizer.decoder = decoders.ByteLevel()
    return clone


class OpenVINOGenerationEngine:
    name = "openvino_genai"
    supports_logit_bias = False  # GenerationConfig has no logit bias
    max_top_logprobs = 0  # the pipeline gives the sampled token's log-probability only

    def __init__(
        self,
        ir_dir: Path,
        *,
        eos_token_ids: list[int],
        why_unstructured: str = "",
        max_num_seqs: int = 64,
        max_num_batched_tokens: int = 256,
        kv_cache_gb: int = 1,
        enable_prefix_caching: bool = True,
        num_threads: int | None = None,
        device: str = "CPU",
        exact: bool = False,
    ):
        """`exact`: compute in f32 with an f32 KV cache whatever faster types the CPU has, so
        log-probabilities match the model's (at a cost in speed where the CPU has bf16)."""
        self.device = device.lower()
        self.why_unstructured = why_unstructured
        ours, theirs = socket.socketpair()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "deployments.engines.openvino_core", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
        )
        theirs.close()
        self._conn = Connection(ours.detach())
        self._send_lock = threading.Lock()
        self._conn.send(
            {
                "ir_dir": str(ir_dir),
                "device": device.upper(),
                "eos_token_ids": sorted(set(eos_token_ids)),
                "max_num_seqs": max_num_seqs,
                "max_num_batched_tokens": max_num_batched_tokens,
                "kv_cache_gb": kv_cache_gb,  # whole GB: the scheduler's cache_size takes no fraction
                "enable_prefix_caching": enable_prefix_caching,
                "num_threads": num_threads,
                "exact": exact,
            }
        )
        kind, detail = self._conn.recv()
        if kind != "ready":
            self._process.wait(timeout=30)
            raise RuntimeError(f"the OpenVINO engine failed to start: {detail}")
        self._ids = itertools.count()
        self._active: dict[int, _Sequence] = {}
        self._stats: dict = {}
        self.on_step: Callable[[int], None] | None = None  # hears each step's batch size (metrics)
        self._error: str | None = None
        self._reader = threading.Thread(target=self._read_steps, name="openvino-core-reader", daemon=True)
        self._reader.start()

    # ------------------------------------------------------------------ public

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[TokenDelta]:
        self._raise_if_dead()
        seq = _Sequence(loop=asyncio.get_running_loop())
        request_id = next(self._ids)
        self._active[request_id] = seq
        self._send(("add", request_id, list(prompt_ids), dataclasses.asdict(params)))
        try:
            while True:
                item = await seq.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            self._active.pop(request_id, None)
            if not seq.finished and self._error is None:
                # The consumer left early (client disconnect, stop string): free the KV cache.
                with contextlib.suppress(EngineDeadError):  # a dead core has no cache to free
                    self._send(("cancel", request_id))

    @property
    def supports_structured_output(self) -> bool:
        return not self.why_unstructured

    def stats(self) -> EngineStats:
        return EngineStats(running_requests=len(self._active), **self._stats)

    def running(self) -> int:
        return len(self._active)

    def check_health(self) -> None:
        self._raise_if_dead()
        if self._process.poll() is not None:
            raise EngineDeadError(f"the OpenVINO engine process exited with code {self._process.returncode}")

    def shutdown(self) -> None:
        if self._process.poll() is None:
            try:
                self._send(("stop",))
                self._process.wait(timeout=10)
            except Exception:  # noqa: BLE001 - shutting down regardless
                self._process.kill()
        self._conn.close()

    # ------------------------------------------------------------------ internals

    def _send(self, message: tuple) -> None:
        with self._send_lock:
            try:
                self._conn.send(message)
            except OSError as exc:  # the core is gone; the reader thread may not have seen it yet
                raise EngineDeadError(f"generation engine failed: {type(exc).__name__}") from None

    def _raise_if_dead(self) -> None:
        if self._error is not None:
            raise EngineDeadError(f"generation engine failed: {self._error}")

    def _read_steps(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                self._fail_all("the engine process exited")
                return
            if message[0] == "step":
                _, updates, self._stats = message
                if updates and self.on_step is not None:
                    self.on_step(len(updates))  # sequences that advanced in this step
                deliveries = []
                for request_id, token_ids, logprobs, finish, refusal in updates:
                    seq = self._active.get(request_id)
                    if seq is None:
                        continue  # cancelled while this step ran
                    if refusal is not None:
                        seq.finished = True
                        kind, text = refusal
                        item = ContextLengthExceededError(text) if kind == "context" else InvalidRequestError(
                            f"the generation engine refused this request's settings: {text}")
                    else:
                        seq.finished = finish is not None
                        item = TokenDelta(token_ids, finish,
                                          None if logprobs is None else [TokenLogprob(lp) for lp in logprobs])
                    deliveries.append((seq, item))
                by_loop: dict[asyncio.AbstractEventLoop, list] = {}
                for seq, item in deliveries:
                    by_loop.setdefault(seq.loop, []).append((seq, item))
                for loop, items in by_loop.items():  # one wake-up per event loop per step
                    loop.call_soon_threadsafe(_deliver, items)
            elif message[0] == "failed":
                logger.error("OpenVINO engine failed: %s", message[1])
                self._fail_all(message[1])
                return

    def _fail_all(self, reason: str) -> None:
        self._error = reason
        error = EngineDeadError(f"generation engine failed: {reason}")
        for seq in list(self._active.values()):
            seq.finished = True
            seq.loop.call_soon_threadsafe(seq.queue.put_nowait, error)


def _deliver(deliveries: list) -> None:
    for seq, item in deliveries:
        seq.queue.put_nowait(item)
