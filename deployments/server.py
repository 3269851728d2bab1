"""ModelServer: the Ray Serve deployment behind every model application.

It loads one model (preparing its files first, see sources.py) with the backend chosen for
this node, and exposes typed methods that take and return the protocol models. The ingress
calls them through a DeploymentHandle, and so can any other Ray job:

    handle = serve.get_app_handle("smollm2-135m-instruct")
    response = await handle.chat.remote(ChatCompletionRequest(...))
    async for chunk in handle.options(stream=True).chat_stream.remote(request): ...

The application's name is the model id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from ray import serve

from hardware.detect import detect
from hardware.select import BackendChoice, select_backend
from serve_app.config import MODEL_DEPLOYMENT_NAME, ModelAppArgs
from serve_app.errors import InvalidRequestError, validation_error_to_api_error
from serve_app.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    EngineStats,
    ModelInfo,
)

from . import tasks
from .sources import PreparedModel, prepare_model

logger = logging.getLogger("ray.serve")

R = TypeVar("R", bound=BaseModel)

# What each task serves; the ingress uses the same table to answer 400 without a round trip.
TASK_METHODS: dict[str, frozenset[str]] = {
    "text-generation": frozenset({"chat", "complete"}),
    "embedding": frozenset({"embed"}),
}


def prepare_for_this_node(args: ModelAppArgs, progress: Callable[[str], None]) -> tuple[BackendChoice, PreparedModel]:
    """The backend this node runs the model on, and the model's files for it (converted and
    cached on first use). Replicas call it, and `hfserve serve` before deploying."""
    choice = select_backend(args.backend, detect())
    progress(f"preparing {args.source} for {choice.backend} on {choice.device} ({choice.reason})")
    prepared = prepare_model(
        args.source,
        args.task,
        revision=args.revision,
        use_openvino=choice.backend == "openvino",
        weight_format=args.weight_format,
        cache_dir=args.effective_cache_dir,
        progress=progress,
    )
    return choice, prepared


def _parse(model: type[R], request: Any) -> R:
    """Handle callers may pass the protocol model or a plain dict."""
    if isinstance(request, model):
        return request
    try:
        return model.model_validate(request)
    except ValidationError as exc:
        raise validation_error_to_api_error(exc.errors()) from None


@serve.deployment(
    name=MODEL_DEPLOYMENT_NAME,
    ray_actor_options={"num_cpus": 0.5},
    max_ongoing_requests=64,
    health_check_period_s=10,
    health_check_timeout_s=30,
    graceful_shutdown_timeout_s=10,
)
class ModelServer:
    def __init__(self, args: ModelAppArgs):
        started = time.monotonic()
        self.args = args
        self.model_id = serve.get_replica_context().app_name
        choice, prepared = prepare_for_this_node(args, lambda message: logger.info("%s: %s", self.model_id, message))
        self._task = tasks.get(args.task).load(self.model_id, args, prepared, choice)
        self._info = ModelInfo(
            id=self.model_id,
            task=args.task,
            owned_by=args.owned_by,
            created=int(time.time()),
            backend=choice.backend,
            device=choice.device,
            source=args.source,
            max_model_len=getattr(self._task, "max_model_len", None),
            embedding_dimensions=getattr(getattr(self._task, "engine", None), "dimensions", None)
            if args.task == "embedding"
            else None,
            request_timeout_s=args.request_timeout_s,
        )
        logger.info("%s: ready in %.1fs", self.model_id, time.monotonic() - started)

    # ------------------------------------------------------------------ typed API

    async def chat(self, request: ChatCompletionRequest | dict) -> ChatCompletionResponse:
        """A whole chat completion (request.stream is ignored; use chat_stream to stream)."""
        return await self._serving("chat").chat(_parse(ChatCompletionRequest, request))

    async def chat_stream(self, request: ChatCompletionRequest | dict) -> AsyncIterator[ChatCompletionChunk]:
        task = self._serving("chat")
        async for chunk in task.chat_stream(_parse(ChatCompletionRequest, request)):
            yield chunk

    async def complete(self, request: CompletionRequest | dict) -> CompletionResponse:
        return await self._serving("complete").complete(_parse(CompletionRequest, request))

    async def complete_stream(self, request: CompletionRequest | dict) -> AsyncIterator[CompletionResponse]:
        task = self._serving("complete")
        async for chunk in task.complete_stream(_parse(CompletionRequest, request)):
            yield chunk

    async def embed(self, request: EmbeddingRequest | dict) -> EmbeddingResponse:
        return await self._serving("embed").embed(_parse(EmbeddingRequest, request))

    async def info(self) -> ModelInfo:
        return self._info

    async def stats(self) -> EngineStats:
        return self._task.stats()

    # ------------------------------------------------------------------ lifecycle

    def check_health(self) -> None:
        self._task.check_health()

    def __del__(self) -> None:
        task = getattr(self, "_task", None)
        if task is not None:
            task.shutdown()

    def _serving(self, method: str):
        if method not in TASK_METHODS[self.args.task]:
            raise InvalidRequestError(
                f"Model '{self.model_id}' is a {self.args.task} model and does not support this endpoint.",
                param="model",
                code="model_not_supported",
            )
        return self._task
