"""The OpenVINO engine core: a process of its own that owns the ContinuousBatchingPipeline.

The pipeline's binding holds the GIL for a whole ``step()``: in the replica that stalled the event
loop (streaming, Ray's threads), whose work in turn delayed the next step. Here the step loop has a
GIL to itself and talks to the replica over a socket pair, one message per step with every
sequence's new tokens (the protocol: the comment below). The core exits when the replica closes its
end, so it never outlives it (docs/architecture.md, "Engines").
"""

from __future__ import annotations

import random
import sys
from multiprocessing.connection import Connection
from typing import Any

# The protocol: pickled tuples over a multiprocessing.connection.Connection.
#   replica -> core: ("add", id, prompt_ids, sampling dict) | ("cancel", id) | ("stop",)
#   core -> replica: ("ready", None) | ("error", text)            once, after loading
#                    ("step", [(id, token_ids, logprobs, finish, refusal)], stats dict)
#                    ("failed", text)                             the pipeline broke
# logprobs: None, or one float per token id (the sampled token's log-probability) when the
# sampling dict asked for them.
# A refusal ends one sequence without failing the core: None, or ("context", text) when the
# prompt does not fit the KV cache, or ("invalid", text) when the pipeline refused the
# request's settings (one caller's bad request must never take the engine down for everyone).


def _generation_config(ov_genai, sampling: dict[str, Any], eos: list[int]):
    if sampling["logit_bias"]:  # the task refuses it first: GenerationConfig has no such field
        raise ValueError("logit_bias is not supported by OpenVINO GenAI")
    config = ov_genai.GenerationConfig()
    config.max_new_tokens = sampling["max_tokens"]
    config.min_new_tokens = sampling["min_tokens"]
    # ignore_eos: the model's EOS is no stop token at all (the config insists that a set EOS be
    # one); the client's stop ids still end the sequence.
    if eos and not sampling["ignore_eos"]:
        config.eos_token_id = eos[0]
    config.ignore_eos = sampling["ignore_eos"]
    config.stop_token_ids = (set() if sampling["ignore_eos"] else set(eos)) | set(sampling["stop_token_ids"])
    config.repetition_penalty = sampling["repetition_penalty"]
    if sampling["constraint"]:
        structured = ov_genai.StructuredOutputConfig()
        # The constraint's kinds are the config's own field names: json_schema, regex, grammar.
        setattr(structured, sampling["constraint"]["kind"], sampling["constraint"]["spec"])
        config.structured_output_config = structured
    if sampling["temperature"] < 1e-5:
        config.do_sample = False
    else:
        config.do_sample = True
        config.temperature = sampling["temperature"]
        config.top_p = sampling["top_p"]
        config.min_p = sampling["min_p"]
        if sampling["top_k"] > 0:  # the config's default is every token
            config.top_k = sampling["top_k"]
    # The pipeline's default seed is 0 for every request, which would make every unseeded
    # sample identical; draw one per request unless the client chose it.
    seed = sampling["seed"]
    config.rng_seed = seed if seed is not None else random.getrandbits(63)
    config.presence_penalty = sampling["presence_penalty"]
    config.frequency_penalty = sampling["frequency_penalty"]
    if sampling["logprobs"] is not None:
        # The sampled token's log-probability in the model's raw distribution; the pipeline gives
        # no alternatives (it treats any value above 1 as 1), so the task refuses asking for them.
        config.logprobs = 1
    return config


def _pipeline(settings: dict[str, Any]):
    import openvino_genai as ov_genai

    scheduler = ov_genai.SchedulerConfig()
    scheduler.cache_size = settings["kv_cache_gb"]
    scheduler.max_num_seqs = settings["max_num_seqs"]
    scheduler.max_num_batched_tokens = settings["max_num_batched_tokens"]
    scheduler.dynamic_split_fuse = True
    scheduler.enable_prefix_caching = settings["enable_prefix_caching"]
    properties = {"INFERENCE_NUM_THREADS": settings["num_threads"]} if settings["num_threads"] else {}
    if settings["exact"]:
        # The CPU plugin computes in bf16 where the CPU has it (AVX512-BF16, AMX) and keeps the KV
        # cache in a smaller type: log-probabilities then differ from the model's by ~1e-2.
        properties |= {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}
    return ov_genai.ContinuousBatchingPipeline(settings["ir_dir"], scheduler, settings["device"], properties)


class EngineCore:
    """The pipeline and the sequences in it: messages from the replica in, step updates out."""

    def __init__(self, pipe, eos_token_ids: list[int]):
        import numpy as np
        import openvino as ov
        import openvino_genai as ov_genai

        self._np, self._ov, self._ov_genai = np, ov, ov_genai
        self._pipe = pipe
        self._eos = eos_token_ids
        self._finish_names = {ov_genai.GenerationFinishReason.STOP: "stop", ov_genai.GenerationFinishReason.LENGTH: "length"}
        self._done = {ov_genai.GenerationStatus.FINISHED, ov_genai.GenerationStatus.STOP, ov_genai.GenerationStatus.CANCEL}
        self._ignored = ov_genai.GenerationStatus.IGNORED
        self.handles: dict[int, Any] = {}
        self.with_logprobs: set[int] = set()  # the sequences whose updates carry log-probabilities
        self.refused: list[tuple[int, list[int], None, None, tuple[str, str]]] = []  # sent with the next step
        self.generated = self.cancelled = self.finished = 0

    def apply(self, message: tuple) -> bool:
        """One message from the replica; False when it says stop."""
        kind = message[0]
        if kind == "add":
            _, request_id, prompt_ids, sampling = message
            try:
                tensor = self._ov.Tensor(self._np.asarray([prompt_ids], dtype=self._np.int64))
                config = _generation_config(self._ov_genai, sampling, self._eos)
                self.handles[request_id] = self._pipe.add_request(request_id, tensor, config)
            except Exception as exc:  # noqa: BLE001 - this request's settings, not the engine
                self.refused.append((request_id, [], None, None, ("invalid", f"{type(exc).__name__}: {exc}")))
                return True
            if sampling["logprobs"] is not None:
                self.with_logprobs.add(request_id)
        elif kind == "cancel":
            handle = self.handles.pop(message[1], None)
            self.with_logprobs.discard(message[1])
            if handle is not None:
                handle.cancel()
                self.cancelled += 1
        return kind != "stop"

    def take_refused(self) -> list:
        refused, self.refused = self.refused, []
        return refused

    def step(self) -> list[tuple[int, list[int], list[float] | None, str | None, tuple[str, str] | None]]:
        """One engine step: (id, new token ids, their log-probabilities if asked, finish reason
        when done, refusal) per sequence that moved."""
        self._pipe.step()
        updates = self.take_refused()
        for request_id, handle in list(self.handles.items()):
            new_ids: list[int] = []
            logprobs: list[float] | None = [] if request_id in self.with_logprobs else None
            finish = None
            while handle.can_read():
                for output in handle.read().values():
                    new_ids.extend(output.generated_ids)
                    if logprobs is not None:
                        logprobs.extend(output.generated_log_probs)
                    finish = self._finish_names.get(output.finish_reason, finish)
            status = handle.get_status()
            if status == self._ignored:
                self._forget(request_id)
                updates.append((request_id, [], None, None,
                                ("context", "the prompt does not fit in the engine's KV cache")))
                continue
            done = status in self._done
            if done:
                self._forget(request_id)
                self.finished += 1
                finish = finish or "stop"
            if new_ids or done:
                self.generated += len(new_ids)
                updates.append((request_id, new_ids, logprobs, finish if done else None, None))
        return updates

    def _forget(self, request_id: int) -> None:
        del self.handles[request_id]
        self.with_logprobs.discard(request_id)

    def stats(self) -> dict[str, Any]:
        metrics = self._pipe.get_metrics()
        return {
            "generated_tokens_total": self.generated,
            "cancelled_requests_total": self.cancelled,
            "finished_requests_total": self.finished,
            "waiting_requests": max(0, int(metrics.requests) - int(metrics.scheduled_requests)),
            "kv_cache_usage": float(metrics.cache_usage) / 100.0,
        }


def serve(conn: Connection) -> None:
    settings = conn.recv()
    try:
        core = EngineCore(_pipeline(settings), settings["eos_token_ids"])
    except Exception as exc:  # noqa: BLE001 - reported to the replica, which fails its constructor
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    while True:
        idle = not core.handles
        while idle or conn.poll():  # take every waiting message; block only when idle
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return  # the replica is gone
            if not core.apply(message):
                return
            idle = False
        if not core.handles:
            # Idle now: no step will report refusals or the counters (a cancellation just
            # landed), so send them.
            conn.send(("step", core.take_refused(), core.stats()))
            continue
        try:
            updates = core.step()
        except Exception as exc:  # noqa: BLE001
            conn.send(("failed", f"{type(exc).__name__}: {exc}"))
            return
        conn.send(("step", updates, core.stats()))


if __name__ == "__main__":
    serve(Connection(int(sys.argv[1])))
