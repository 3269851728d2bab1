"""Generation on vLLM (`backend: vllm`): its AsyncLLM in the replica, as Ray Serve LLM's
LLMServer runs it, behind the engine contract. Prompts arrive as token ids and vLLM returns
token ids (no detokenising): text, stop strings and chat templates stay the task's.

vLLM is imported here only: it lives in the nodes' environment or in the application's
runtime_env (docs/operations.md), not in the project's own requirements.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from contract.engine import SamplingParams, TokenDelta, TokenLogprob
from contract.errors import InvalidRequestError, ServiceUnavailableError
from contract.logprobs import MAX_TOP_LOGPROBS
from contract.model_api import EngineStats

logger = logging.getLogger("ray.serve")


class VLLMUnavailableError(RuntimeError):
    """`backend: vllm` where vLLM cannot be imported: the replica fails to start, saying how to install it."""


class EngineDeadError(ServiceUnavailableError):
    """vLLM's engine core died: a 503 the breaker counts; the health check fails and Serve
    replaces the replica."""

    def __init__(self, message: str):
        super().__init__(message, code="model_unavailable", retry_after_s=5)


def import_vllm():
    try:
        import vllm
    except ImportError as exc:
        raise VLLMUnavailableError(
            f"backend vllm: vLLM cannot be imported in this replica ({exc}); install it on the node or give the "
            "model's application a runtime_env that installs it (docs/operations.md, 'vLLM')") from None
    return vllm


def assigned_gpu_share() -> float | None:
    """The GPU share Ray reserved for this replica, as vLLM's gpu_memory_utilization: None for
    a whole GPU or more (vLLM's own default then) and outside Ray."""
    import ray

    if not ray.is_initialized():
        return None
    share = ray.get_runtime_context().get_assigned_resources().get("GPU")
    return share if share and share < 1 else None


class VLLMGenerationEngine:
    name = "vllm"
    supports_logit_bias = True
    supports_structured_output = True  # vLLM's xgrammar backend, the dialect deployments/grammars.py checks
    max_top_logprobs = MAX_TOP_LOGPROBS
    why_unstructured = ""

    def __init__(
        self,
        hf_dir: Path,
        *,
        eos_token_ids: list[int],
        device: str = "cpu",
        dtype: str = "auto",
        max_num_seqs: int = 64,
        max_num_batched_tokens: int = 256,
        kv_cache_gb: float = 1.0,
        max_model_len: int = 2048,
        enable_prefix_caching: bool = True,
        gpu_memory_utilization: float | None = None,
    ):
        """`gpu_memory_utilization`: the share of the GPU this replica reserved (placement sizes it
        from the model's memory estimate), so engines that share a GPU each keep to their share;
        the KV cache is `kv_cache_gb` on every device, as the estimate counts it."""
        import_vllm()
        from vllm.config import StructuredOutputsConfig
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.device = device
        self._eos = tuple(sorted(set(eos_token_ids)))
        self._ids = itertools.count()
        self._running = 0
        self._scheduler: dict = {}
        self._totals = {"generated": 0, "cancelled": 0, "finished": 0}
        self.on_step: Callable[[int], None] | None = None  # hears each step's batch size (metrics)
        engine_args = AsyncEngineArgs(
            model=str(hf_dir),
            dtype=dtype,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            # vLLM needs a step to hold at least one whole sequence unless it chunks prefills,
            # which it does on every platform in v1; the budget is ours.
            max_num_batched_tokens=max_num_batched_tokens,
            enable_prefix_caching=enable_prefix_caching,
            kv_cache_memory_bytes=int(kv_cache_gb * 2**30),
            max_logprobs=MAX_TOP_LOGPROBS,
            structured_outputs_config=StructuredOutputsConfig(backend="xgrammar"),
            disable_log_stats=True,  # vLLM's own loggers off; _SchedulerStats below still hears each step
            **({"gpu_memory_utilization": gpu_memory_utilization} if gpu_memory_utilization else {}),
        )
        self._llm = AsyncLLM.from_engine_args(engine_args, stat_loggers=[_stat_logger(self._heard)])

    # ------------------------------------------------------------------ public

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[TokenDelta]:
        from vllm.inputs import TokensPrompt
        from vllm.v1.engine.exceptions import EngineDeadError as VLLMDeadError

        self._raise_if_dead()
        stream = self._llm.generate(TokensPrompt(prompt_token_ids=list(prompt_ids)), self._sampling(params),
                                    f"hfserve-{next(self._ids)}")
        self._running += 1
        finished = False
        try:
            async for output in stream:
                completion = output.outputs[0]
                reason = completion.finish_reason if output.finished else None
                if reason not in (None, "stop", "length"):  # "abort" or "error": not a request we closed
                    raise EngineDeadError(f"vLLM ended the request: {reason}")
                finished = output.finished
                tokens = list(completion.token_ids)
                self._totals["generated"] += len(tokens)
                if tokens or finished:
                    yield TokenDelta(tokens, reason, _logprobs(tokens, completion.logprobs, params.logprobs))
                if finished:
                    self._totals["finished"] += 1
                    return
        except VLLMDeadError as exc:
            raise EngineDeadError(f"generation engine failed: {exc}") from None
        except ValueError as exc:  # vLLM's request validation (VLLMValidationError is one)
            raise InvalidRequestError(f"the generation engine refused this request: {exc}") from None
        finally:
            self._running -= 1
            if not finished:
                self._totals["cancelled"] += 1
            await stream.aclose()  # vLLM aborts a request whose stream closes before its finish

    def stats(self) -> EngineStats:
        return EngineStats(
            running_requests=self._running,
            waiting_requests=self._scheduler.get("waiting", 0),
            kv_cache_usage=self._scheduler.get("kv_cache_usage"),
            generated_tokens_total=self._totals["generated"],
            cancelled_requests_total=self._totals["cancelled"],
            finished_requests_total=self._totals["finished"],
        )

    def running(self) -> int:
        return self._running

    def check_health(self) -> None:
        self._raise_if_dead()

    def shutdown(self) -> None:
        self._llm.shutdown()

    # ------------------------------------------------------------------ internals

    def _raise_if_dead(self) -> None:
        if self._llm.errored:
            raise EngineDeadError(f"generation engine failed: {self._llm.dead_error}")

    def _heard(self, running: int, waiting: int, kv_cache_usage: float) -> None:
        self._scheduler = {"waiting": waiting, "kv_cache_usage": kv_cache_usage}
        if self.on_step is not None and running:
            self.on_step(running)

    def _sampling(self, params: SamplingParams):
        from vllm import SamplingParams as VLLMSampling
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        structured = None
        if params.constraint is not None:
            kind = {"json_schema": "json"}.get(params.constraint.kind, params.constraint.kind)
            structured = StructuredOutputsParams(**{kind: params.constraint.spec})
        # The model's files may name EOS tokens beyond the one vLLM reads from its config.
        stops = set(params.stop_token_ids) | (set() if params.ignore_eos else set(self._eos))
        return VLLMSampling(
            max_tokens=params.max_tokens,
            temperature=0.0 if params.greedy else params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
            min_p=params.min_p,
            seed=params.seed,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty,
            repetition_penalty=params.repetition_penalty,
            stop_token_ids=sorted(stops),
            min_tokens=params.min_tokens,
            ignore_eos=params.ignore_eos,
            logit_bias=dict(params.logit_bias) or None,
            logprobs=params.logprobs,
            structured_outputs=structured,
            detokenize=False,
            output_kind=RequestOutputKind.DELTA,
        )


def _logprobs(tokens: list[int], given, asked: int | None) -> list[TokenLogprob] | None:
    """vLLM's per-token maps (token id -> Logprob with its rank) as the contract's: the sampled
    token's own, and the `asked` likeliest (vLLM adds the sampled one when it is not among them)."""
    if asked is None:
        return None
    out = []
    for token, alternatives in zip(tokens, given or [], strict=True):
        top = sorted(((t, lp) for t, lp in alternatives.items() if lp.rank is not None and lp.rank <= asked),
                     key=lambda item: item[1].rank)
        out.append(TokenLogprob(alternatives[token].logprob, tuple((t, lp.logprob) for t, lp in top)))
    return out


def _stat_logger(heard: Callable[[int, int, float], None]):
    """A vLLM stat logger class (its StatLoggerFactory) that passes each step's scheduler figures on."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class _SchedulerStats(StatLoggerBase):
        def __init__(self, vllm_config, engine_index: int = 0):
            pass

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
            if scheduler_stats is not None:
                heard(scheduler_stats.num_running_reqs, scheduler_stats.num_waiting_reqs,
                      scheduler_stats.kv_cache_usage)

        def log_engine_initialized(self):
            pass

    return _SchedulerStats
