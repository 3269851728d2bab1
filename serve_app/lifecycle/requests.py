"""What POST /models/load and /models/unload do in the ingress: every check that can answer
at once (a 4xx), then the record handed to the state actor, whose reconciler deploys it.

Checked here, before anything is recorded: the model id, the args (task, hardware, options)
as ModelAppArgs validates them, a source that climbs out of its directory (`..`) or names a
package that is not installed, the task (inferred from the model's files when omitted), a
name a config-file model has, and the estimated weight memory against the nodes' free
memory. The state actor then checks it against the other run-time models (idempotence,
max_loaded_models, model_memory_budget_gb) and picks what to evict.

A source that is well-formed but missing (a local path, a hub id this cluster cannot reach)
is not refused here: the node that loads it may differ from this one, so its load ends
`failed` with the loader's error, shown in /v1/models.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from pydantic import ValidationError

from contract.config import IngressArgs, ModelAppArgs
from contract.errors import (
    ConflictError,
    InvalidRequestError,
    ModelNotFoundError,
    validation_error_to_api_error,
)
from contract.lifecycle import LifecycleReply, LoadModelRequest, RuntimeModel
from contract.tasks import TaskInferenceError
from deployments.sources import SourceError, parse_source
from deployments.task_inference import with_task

from ..model_directory import ModelDirectory
from ..state import StateClient
from .admission import GB, RECENTLY_USED_S, gb
from .memory import estimate_bytes


def check_source(source: str) -> None:
    if ".." in re.split(r"[\\/]", source):
        raise InvalidRequestError(f"The source {source!r} climbs out of its directory ('..'); give an absolute "
                                  "path, a hub id or package:<package>/<file>.", param="source", code="invalid_source")
    if source.startswith("package:"):
        try:
            parse_source(source)
        except SourceError as exc:
            raise InvalidRequestError(f"{exc}.", param="source", code="invalid_source") from None


def resolve_args(body: LoadModelRequest) -> ModelAppArgs:
    """The model's args with its task (inferred from its files when omitted and they are here)."""
    check_source(body.source)
    try:
        args = body.validated_args()
    except ValidationError as exc:
        raise validation_error_to_api_error([{**e, "loc": ("options", *e["loc"])} if e["loc"] and e["loc"][0] not in
                                             ("source", "task", "hardware", "backend") else e
                                             for e in exc.errors(include_url=False)]) from None
    try:
        return with_task(args)
    except SourceError:
        return args  # not on this node: the replica's builder infers it, or the load fails saying why
    except TaskInferenceError as exc:
        raise InvalidRequestError(str(exc), param="task", code="task_not_inferred") from None


def node_free_memory(reports: list[dict[str, Any]]) -> int | None:
    """The most free memory on any node (the model's replica lands on one of them)."""
    free = [r["cpu"].get("memory_available_bytes") for r in reports if r.get("cpu")]
    free = [value for value in free if value]
    return max(free) if free else None


def busy_models(directory: ModelDirectory, used: dict[str, float]) -> list[str]:
    now = time.time()
    busy = {entry.id for entry in directory.entries() if any(r.ongoing_requests for r in entry.placed)}
    busy |= {model for model, at in used.items() if now - at < RECENTLY_USED_S}
    return sorted(busy)


async def load(body: LoadModelRequest, *, args_cfg: IngressArgs, directory: ModelDirectory, state: StateClient,
               node_reports, used: dict[str, float]) -> tuple[int, LifecycleReply]:
    args = resolve_args(body)
    await directory.refresh(max_age_s=0.5)
    if directory.status_of(body.model) is not None and body.model not in directory.runtime:
        raise ConflictError(f"The name '{body.model}' is taken by a model from the config file; choose another.",
                            param="model", code="model_name_conflict")
    estimate = await asyncio.to_thread(estimate_bytes, args)
    if estimate is not None and node_reports is not None:
        free = node_free_memory(await node_reports())
        if free is not None and estimate > free:
            raise ConflictError(f"Model '{body.model}' needs about {gb(estimate)} for its weights, but the node with the "
                                f"most free memory has {gb(free)}.", code="insufficient_memory")
    record = RuntimeModel(model=body.model, args=args.model_dump(mode="json", exclude_defaults=True),
                          autoscaling=body.autoscaling, requested_at=time.time(), estimated_bytes=estimate)
    budget = int(args_cfg.model_memory_budget_gb * GB) if args_cfg.model_memory_budget_gb else None
    result = await state.call("models_load", record, busy_models(directory, used), args_cfg.max_loaded_models, budget,
                              timeout_s=5.0)
    if "error" in result:
        raise ConflictError(result["error"]["message"], code=result["error"]["code"])
    stored = RuntimeModel.model_validate(result["record"])
    directory.runtime[stored.model] = stored  # /v1/models here shows it at once; the others at their next sync
    for name in result["evicted"]:
        if name in directory.runtime:
            directory.runtime[name] = directory.runtime[name].model_copy(update={"state": "unloading"})
    reply = LifecycleReply(model=stored.model, status=stored.state, message=stored.error, evicted=result["evicted"],
                           estimated_bytes=stored.estimated_bytes)
    return (200 if stored.state == "ready" else 202), reply


async def unload(model: str, *, directory: ModelDirectory, state: StateClient) -> LifecycleReply:
    result = await state.call("models_unload", model, timeout_s=5.0)
    if result is None:
        await directory.refresh(max_age_s=0.5)
        if directory.status_of(model) is not None:
            raise ConflictError(f"Model '{model}' comes from the config file; deploy a config without it to remove it.",
                                param="model", code="model_from_config")
        raise ModelNotFoundError(model)
    record = RuntimeModel.model_validate(result)
    # Stop routing to it here at once; the other replicas hear it with their next sync.
    directory.runtime[model] = record
    return LifecycleReply(model=model, status="unloading")
