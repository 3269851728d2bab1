"""ModelServer: the class behind every model application.

It loads one model (preparing its files first, see sources.py) with the backend chosen for
this node, through its task's load() from the task table, and exposes typed methods that take
and return the protocol models. The ingress calls them through a DeploymentHandle, and so can
any other Ray job:

    handle = serve.get_app_handle("smollm2-135m-instruct")
    response = await handle.chat.remote(ChatCompletionRequest(...))
    async for chunk in handle.options(stream=True).chat_stream.remote(request): ...

The application's name is the model id.

ModelServer is a plain class; `model_server_deployment()` makes it a Serve deployment (as
Ray Serve LLM does with its LLMServer). Importing this module therefore loads neither Ray
Serve nor, through it, FastAPI and Starlette: a model replica's own code has no HTTP framework
in it (tests/unit/test_architecture.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from contract import tasks
from contract.config import MODEL_DEPLOYMENT_NAME, ModelAppArgs
from contract.errors import InvalidRequestError, validation_error_to_api_error
from contract.model_api import EngineStats, ModelInfo
from contract.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
)
from contract.text import replace_lone_surrogates
from hardware.detect import detect
from hardware.select import BackendChoice, select_backend

from .logs import quiet_client_errors
from .sources import PreparedModel, prepare_model

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


def model_server_deployment():
    """ModelServer as a Serve deployment, with the defaults above."""
    from ray import serve

    return serve.deployment(**DEPLOYMENT_OPTIONS)(ModelServer)


def prepare_for_this_node(args: ModelAppArgs, progress: Callable[[str], None]) -> tuple[BackendChoice, PreparedModel]:
    """The backend this node runs the model on, and the model's files for it (converted and
    cached on first use). Replicas call it, and `hfserve serve` before deploying."""
    choice = select_backend(args.backend, detect())
    progress(f"preparing {args.source} for {choice.backend} on {choice.device} ({choice.reason})")
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


class ModelServer:
    def __init__(self, args: ModelAppArgs):
        started = time.monotonic()
        quiet_client_errors()
        self.args = args
        self.model_id, replica_id = _this_replica()
        self._spec = tasks.get(args.task)
        choice, prepared = prepare_for_this_node(args, lambda message: logger.info("%s: %s", self.model_id, message))
        self._task = self._spec.load(self.model_id, args, prepared, choice)
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
            request_timeout_s=args.request_timeout_s,
            endpoints=list(self._spec.endpoints),
            replica_id=replica_id,
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

    def _serving(self, endpoint: str):
        if endpoint not in self._spec.endpoints:
            raise InvalidRequestError(
                f"Model '{self.model_id}' is a {self.args.task} model and does not support this endpoint.",
                param="model",
                code="model_not_supported",
            )
        return self._task
