"""ModelServer: the class behind every model application (the application's name is the model id).

It loads one model through its task's load() (files prepared first, sources.py) with the backend
chosen for this node, and exposes typed methods over the protocol models, which the ingress and
any other Ray job call through a DeploymentHandle (examples/handle_call.py).

A plain class: `model_server_deployment()` makes it a Serve deployment (as Ray Serve LLM does with
LLMServer), so importing it loads no Ray Serve, FastAPI or Starlette (tests/unit/test_architecture.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from contract import tasks
from contract.config import MODEL_DEPLOYMENT_NAME, ModelAppArgs
from contract.embedding_protocol import EmbeddingRequest, EmbeddingResponse
from contract.errors import InvalidRequestError, validation_error_to_api_error
from contract.model_api import EngineStats, ModelInfo, ReplicaRecord
from contract.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    StreamedResponse,
)
from contract.scoring_protocol import (
    ClassificationRequest,
    ClassificationResponse,
    RerankRequest,
    RerankResponse,
)
from contract.text import replace_lone_surrogates
from contract.tokenize_protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from hardware.detect import detect
from hardware.probe import PROBE_TIMEOUT_S, node_actor
from hardware.report import NodeReport
from hardware.select import BackendChoice, select_backend
from observability.log_once import DistinctWarnings
from observability.recorder import Recorder, gauge_refresh_s

from .logs import quiet_client_errors
from .serving_metrics import ReplicaMeter
from .sources import PreparedModel, prepare_model, stable_revision

logger = logging.getLogger("ray.serve")

R = TypeVar("R", bound=BaseModel)

# The deployment's defaults; serve_config.yaml's `deployments:` entries override them.
DEPLOYMENT_OPTIONS: dict[str, Any] = {
    "name": MODEL_DEPLOYMENT_NAME,
    "ray_actor_options": {"num_cpus": 0.5},
    "max_ongoing_requests": 64,
    # A replica whose engine died is found within this and replaced: shorter than Serve's
    # default 10 s because the check itself is a few attribute reads.
    "health_check_period_s": 5,
    "health_check_timeout_s": 30,
    "graceful_shutdown_timeout_s": 10,
}


# The handle methods the ingress calls through call_with_heartbeats: those that may run long,
# and the tokenizer's, which a circuit breaker's probe may use (breaker_gate.py probe_request).
PROGRESS_METHODS = ("chat", "complete", "embed", "rerank", "classify", "tokenize", "detokenize")


def model_server_deployment():
    """ModelServer as a Serve deployment, with the defaults above."""
    from ray import serve

    return serve.deployment(**DEPLOYMENT_OPTIONS)(ModelServer)


def resident_bytes() -> int | None:
    """This process's resident memory (Linux /proc; None elsewhere): what a loaded model holds."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def node_hardware(model_id: str) -> tuple[NodeReport, object | None]:
    """This node's hardware report, from its hardware actor (hardware/probe.py), and the actor.
    Without one (outside Ray, or before the supervisor reached a new node) the replica detects
    for itself and says why."""
    import ray

    if not ray.is_initialized():
        return detect(), None
    node_id = ray.get_runtime_context().get_node_id()
    actor = node_actor(node_id)
    if actor is None:
        logger.warning("%s: node %s has no hardware actor yet; detecting in this replica", model_id, node_id[:8])
        return detect(node_id, ray.util.get_node_ip_address()), None
    try:
        return NodeReport.model_validate(ray.get(actor.report.remote(), timeout=PROBE_TIMEOUT_S)), actor
    except Exception as exc:  # noqa: BLE001 - a restarting actor must not fail the replica
        logger.warning("%s: the hardware actor of node %s did not answer (%s); detecting in this replica",
                       model_id, node_id[:8], exc)
        return detect(node_id, ray.util.get_node_ip_address()), None


def prepare_for_this_node(
    name: str, args: ModelAppArgs, progress: Callable[[str], None], report: NodeReport | None = None,
    gpus_assigned: int | None = None,
) -> tuple[BackendChoice, PreparedModel]:
    """The backend this node runs the model on, and the model's files for it (converted and
    cached on first use, once per node: a file lock makes a second replica wait and reuse).
    Replicas call it, and `hfserve serve` before deploying."""
    choice = select_backend(name, args.hardware_preference, args.backend, report or detect(), gpus_assigned,
                            auto_vllm=args.task == "text-generation")
    progress(f"preparing {args.source} for {choice.backend} on {choice.device} ({choice.platform}: {choice.reason})")
    if "reserved no GPU" in choice.reason:
        logger.warning("%s: this node has a GPU but the replica reserved none, so it runs on %s; set num_gpus in "
                       "the model's args (a deployments[].ray_actor_options block replaces the one placement sets)",
                       name, choice.platform)
    prepared = prepare_model(
        args.source,
        tasks.get(args.task).hf_task,
        revision=args.revision,
        use_openvino=choice.backend == "openvino",
        weight_format=args.weight_format,
        cache_dir=args.effective_cache_dir,
        progress=progress,
    )
    return choice, prepared


S = TypeVar("S", bound=StreamedResponse)


async def _timing_the_first(chunks: AsyncIterator[S], started: float) -> AsyncIterator[S]:
    """The chunks, the first one noting how long after `started` it came (the prefill, for a
    chat stream): the gateway takes it off its wait for that chunk to time Serve's queue."""
    first = True
    async with contextlib.aclosing(chunks):  # closing this closes the task's stream: the engine frees the sequence
        async for chunk in chunks:
            if first:
                chunk._replica_started_s = time.monotonic() - started
                first = False
            yield chunk


def _parse(model: type[R], request: Any) -> R:
    """Handle callers may pass the protocol model or a plain dict."""
    if isinstance(request, model):
        return request
    try:
        return model.model_validate(replace_lone_surrogates(request))
    except ValidationError as exc:
        raise validation_error_to_api_error(exc.errors()) from None


def _this_replica() -> tuple[str, str]:
    """(application name = model id, this replica's unique id)."""
    from ray import serve

    context = serve.get_replica_context()
    return context.app_name, context.replica_tag


def _gpus_assigned() -> int | None:
    import ray

    return len(ray.get_gpu_ids()) if ray.is_initialized() else None


class ModelServer:
    _stopped = False  # set on shutdown: the gauge thread ends

    def __init__(self, args: ModelAppArgs):
        started = time.monotonic()
        quiet_client_errors()
        self.args = args
        self.model_id, replica_id = _this_replica()
        self._spec = tasks.get(args.task)
        report, self._node_actor = node_hardware(self.model_id)
        choice, prepared = prepare_for_this_node(
            self.model_id, args, lambda message: logger.info("%s: %s", self.model_id, message), report, _gpus_assigned()
        )
        self._task = self._spec.load(self.model_id, args, prepared, choice)
        self._meter = ReplicaMeter(Recorder(args.enable_metrics), self.model_id)
        attach = getattr(self._task, "attach_meter", None)  # a plug-in task may record nothing
        if attach is not None:
            attach(self._meter)
        self._info = ModelInfo(
            id=self.model_id,
            task=args.task,
            owned_by=args.owned_by,
            created=int(time.time()),
            backend=choice.backend,
            device=choice.device,
            source=args.source,
            max_model_len=getattr(self._task, "max_model_len", None),
            embedding_dimensions=getattr(self._task, "embedding_dimensions", None),
            capabilities=getattr(self._task, "capabilities", None),
            request_timeout_s=args.request_timeout_s,
            endpoints=list(self._spec.endpoints),
            replica_id=replica_id,
            revision=stable_revision(args.source, args.revision, args.task, args.weight_format),
            platform=choice.platform,
            node_id=report.node_id,
            node_ip=report.node_ip,
            hostname=report.hostname,
            max_batch_size=args.effective_max_batch_size if "embed" in self._spec.endpoints else None,
            max_rerank_documents=getattr(self._task, "max_rerank_documents", None),
            fallbacks=list(args.fallbacks),
            context_fallbacks=list(args.context_fallbacks),
            fallback_after_s=args.fallback_after_s,
        )
        self._report_replica()
        self._meter.loaded(time.monotonic() - started)
        threading.Thread(target=self._refresh_gauges, name="metrics-gauges", daemon=True).start()
        logger.info("%s: ready in %.1fs on %s (%s)", self.model_id, time.monotonic() - started, choice.platform, report.hostname)

    # ------------------------------------------------------------------ typed API

    async def chat(self, request: ChatCompletionRequest | dict) -> ChatCompletionResponse:
        """A whole chat completion (request.stream is ignored; use chat_stream to stream)."""
        with self._in_flight():
            return await self._serving("chat").chat(_parse(ChatCompletionRequest, request))

    async def chat_stream(self, request: ChatCompletionRequest | dict) -> AsyncIterator[ChatCompletionChunk]:
        started = time.monotonic()
        task = self._serving("chat")
        with self._in_flight():
            async for chunk in _timing_the_first(task.chat_stream(_parse(ChatCompletionRequest, request)), started):
                yield chunk

    async def complete(self, request: CompletionRequest | dict) -> CompletionResponse:
        with self._in_flight():
            return await self._serving("complete").complete(_parse(CompletionRequest, request))

    async def complete_stream(self, request: CompletionRequest | dict) -> AsyncIterator[CompletionResponse]:
        started = time.monotonic()
        task = self._serving("complete")
        with self._in_flight():
            async for chunk in _timing_the_first(task.complete_stream(_parse(CompletionRequest, request)), started):
                yield chunk

    async def embed(self, request: EmbeddingRequest | dict) -> EmbeddingResponse:
        with self._in_flight():
            return await self._serving("embed").embed(_parse(EmbeddingRequest, request))

    async def rerank(self, request: RerankRequest | dict) -> RerankResponse:
        with self._in_flight():
            return await self._serving("rerank").rerank(_parse(RerankRequest, request))

    async def classify(self, request: ClassificationRequest | dict) -> ClassificationResponse:
        with self._in_flight():
            return await self._serving("classify").classify(_parse(ClassificationRequest, request))

    async def tokenize(self, request: TokenizeRequest | dict) -> TokenizeResponse:
        """The token ids the model reads for a prompt, or for chat messages (its chat template
        applied, as chat does); no engine is involved, so the call is not counted as in flight."""
        return await self._serving("tokenize").tokenize(_parse(TokenizeRequest, request))

    async def detokenize(self, request: DetokenizeRequest | dict) -> DetokenizeResponse:
        return await self._serving("detokenize").detokenize(_parse(DetokenizeRequest, request))

    @contextlib.contextmanager
    def _in_flight(self):
        """Counts the call as ongoing (hf_server_active_requests, /status) until it ends."""
        self._meter.started()
        try:
            yield
        finally:
            self._meter.ended()

    async def call_with_heartbeats(self, method: str, request: Any, heartbeat_s: float = 2.0) -> AsyncIterator[Any]:
        """A long unary call (chat, complete, embed, rerank, classify) as a stream: None every heartbeat_s while it
        runs, then its answer. The ingress waits request_timeout_s for each item, so a live model
        may take as long as it needs while one that died with its node is noticed at once."""
        if method not in PROGRESS_METHODS:
            raise InvalidRequestError(f"'{method}' cannot be called with progress", param="method")
        work = asyncio.ensure_future(getattr(self, method)(request))
        yield None  # started: the caller stops counting queue time
        try:
            while True:
                done, _ = await asyncio.wait({work}, timeout=max(0.05, heartbeat_s))
                if done:
                    yield work.result()
                    return
                yield None
        finally:
            if not work.done():
                work.cancel()  # the caller went away: stop the work too

    async def info(self) -> ModelInfo:
        return self._info

    async def stats(self) -> EngineStats:
        return self._task.stats()

    # ------------------------------------------------------------------ lifecycle

    def check_health(self) -> None:
        self._task.check_health()
        self._report_replica()

    def _refresh_gauges(self) -> None:
        period_s, problems = gauge_refresh_s(), DistinctWarnings(logger)
        while not self._stopped:
            time.sleep(period_s)
            try:
                self._meter.engine(self._task.stats())
            except Exception as exc:  # noqa: BLE001 - the gauges must outlive one bad round; said once per error
                if not self._stopped:  # an engine shutting down is no news
                    problems.warn("%s: engine gauges not refreshed: %s: %s", self.model_id, type(exc).__name__, exc)

    def _report_replica(self) -> None:
        """Tell this node's hardware actor about this replica (fire and forget): /status lists
        every replica of every model from these records."""
        if self._node_actor is None:
            return
        record = ReplicaRecord(
            model=self.model_id, replica_id=self._info.replica_id, node_id=self._info.node_id, node_ip=self._info.node_ip,
            hostname=self._info.hostname, platform=self._info.platform, backend=self._info.backend,
            device=self._info.device, pid=os.getpid(), started_at=self._info.created, engine=self._task.stats(),
            ongoing_requests=self._meter.active, reported_at=time.time(), rss_bytes=resident_bytes(),
        )
        try:
            self._node_actor.put_replica.remote(record.replica_id, record.model_dump())
        except Exception:  # noqa: BLE001 - the actor is restarting; the next health check retries
            pass

    def __del__(self) -> None:
        actor, info = getattr(self, "_node_actor", None), getattr(self, "_info", None)
        if actor is not None and info is not None:
            try:
                actor.drop_replica.remote(info.replica_id)
            except Exception:  # noqa: BLE001
                pass
        self._stopped = True
        meter = getattr(self, "_meter", None)
        if meter is not None:
            meter.unloaded()
        task = getattr(self, "_task", None)
        if task is not None:
            task.shutdown()

    def _serving(self, endpoint: str):
        if endpoint not in self._spec.endpoints:
            raise InvalidRequestError(
                f"Model '{self.model_id}' is a {self.args.task} model and does not support this endpoint.",
                param="model",
                code="model_not_supported",
            )
        return self._task
