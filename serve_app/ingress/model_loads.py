"""What POST /models/load and /models/unload do in the ingress: every check that can answer
at once (a 4xx, never a 500), then the record handed to the state actor, whose reconciler
deploys it. Checked here: the id and the args (ModelAppArgs), the source (`..`, a device or
special file, an unreadable or over-long path, custom code, weights that do not parse, and that
it resolves: a path that exists here, an installed package, a hub model in this node's HF cache
or known to the hub), the task, a name a config-file model or another application of the
cluster has, fallbacks that are this server's models of the same task, resources no node can
ever offer, and the weights against the nodes' free memory.
A path must exist on the node that answers the load (the ingress's): a cluster serves run-time
models from storage every node sees, as the replica may start on any of them.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from contract.config import FallbackConfigError, ModelAppArgs, check_fallbacks
from contract.errors import (
    ConflictError,
    InvalidRequestError,
    ModelNotFoundError,
    validation_error_to_api_error,
)
from contract.ingress_args import IngressArgs
from contract.lifecycle import LifecycleReply, LoadModelRequest, RuntimeModel
from contract.tasks import TaskInferenceError
from deployments.sources import (
    SourceError,
    SourceNotFoundError,
    check_hub_model,
    parse_source,
    refuse_custom_code,
)
from deployments.task_inference import with_task
from serve_app.ingress.model_directory import ModelDirectory
from serve_app.state.client import StateClient
from serve_app.state.lifecycle.admission import GB, RECENTLY_USED_S, gb
from serve_app.state.lifecycle.memory import estimate_bytes
from serve_app.state.lifecycle.resources import describe, replica_needs, short_of

# Application names a model may never take, deployed or not: the ingress of serve_config.yaml.
RESERVED_NAMES = frozenset({"ingress"})


def _invalid_source(message: str, code: str = "invalid_source") -> InvalidRequestError:
    return InvalidRequestError(f"source: {message}.", param="source", code=code)


def check_source(source: str, revision: str | None = None) -> None:
    """The 400 a source earns here: one that does not resolve (`source_not_found`: a missing path,
    a hub model neither cached nor on the hub) or may not be used. Nothing is downloaded or converted."""
    if ".." in re.split(r"[\\/]", source):
        raise InvalidRequestError(f"The source {source[:120]!r} climbs out of its directory ('..'); give an absolute "
                                  "path, a hub id or package:<package>/<file>.", param="source", code="invalid_source")
    try:
        resolved = parse_source(source, revision)
        if resolved.kind == "hub":
            check_hub_model(resolved)
    except SourceNotFoundError as exc:
        raise _invalid_source(str(exc), code="source_not_found") from None
    except SourceError as exc:
        raise _invalid_source(str(exc)) from None
    if resolved.kind != "hub":
        try:
            refuse_custom_code(Path(resolved.location))
        except SourceError as exc:
            raise _invalid_source(str(exc), code="custom_code_refused") from None


def resolve_args(body: LoadModelRequest) -> ModelAppArgs:
    """The model's args with its task (inferred from its files when omitted and they are here)."""
    revision = body.options.get("revision")
    check_source(body.source, revision if isinstance(revision, str) else None)
    try:
        args = body.validated_args()
    except ValidationError as exc:
        raise validation_error_to_api_error([{**e, "loc": ("options", *e["loc"])} if e["loc"] and e["loc"][0] not in
                                             ("source", "task", "hardware", "backend") else e
                                             for e in exc.errors(include_url=False)]) from None
    try:
        return with_task(args)
    except SourceNotFoundError:
        return args  # a hub model whose files cannot be read now: the replica's builder infers it
    except SourceError as exc:
        raise _invalid_source(str(exc)) from None
    except TaskInferenceError as exc:
        raise InvalidRequestError(str(exc), param="task", code="task_not_inferred") from None


def check_name(model: str, directory: ModelDirectory) -> None:
    if model in directory.runtime:
        return
    if directory.status_of(model) is not None:
        raise ConflictError(f"The name '{model}' is taken by a model from the config file; choose another.",
                            param="model", code="model_name_conflict")
    if model in directory.config_aliases:
        raise ConflictError(f"The name '{model}' is an alias in the config file; choose another.", param="model",
                            code="alias_exists")
    if model in RESERVED_NAMES or model in directory.other_apps:
        raise ConflictError(f"The name '{model}' is an application of this server (not a model); choose another.",
                            param="model", code="reserved_name")


async def check_model_fallbacks(model: str, args: ModelAppArgs, directory: ModelDirectory) -> None:
    """A 400 naming the field for a fallback that is the model itself, no model of this server
    (config-file or run-time), or one of another task; a model whose task is not known yet (a
    config-file model not heard from) is not compared."""
    task_of: dict[str, str | None] = {}
    for name in {*args.fallbacks, *args.context_fallbacks}:
        declared = await directory.declared(name)
        if isinstance(declared, dict):
            task_of[name] = declared.get("task")
        elif declared is not None:
            task_of[name] = declared.task
        elif directory.status_of(name) is not None:  # a model whose args are not known (yet)
            task_of[name] = None
    try:
        check_fallbacks(model, args, task_of)
    except FallbackConfigError as exc:
        raise InvalidRequestError(f"options.{exc}.", param=f"options.{exc.field}", code="invalid_fallback") from None


def check_resources(args: ModelAppArgs, nodes: list[dict[str, float]] | None) -> None:
    """A 400 for a replica no node could ever hold, whatever is unloaded: it would wait forever."""
    if not nodes:
        return
    needs = replica_needs(args)
    lacking = short_of(needs, nodes)
    if lacking:
        field = {"CPU": "num_cpus", "GPU": "num_gpus"}.get(next(iter(lacking)), "resources")
        raise InvalidRequestError(
            f"No node of the cluster can ever offer what each replica of this model asks for ({describe(needs)}); "
            f"the most any node has is {describe(lacking)}.", param=f"options.{field}", code="unschedulable")


def ray_node_totals() -> list[dict[str, float]] | None:
    """Each alive node's total Ray resources; None outside a Ray cluster."""
    import ray

    if not ray.is_initialized():
        return None
    return [dict(node.get("Resources") or {}) for node in ray.nodes() if node.get("Alive")]


def load_timeout(body: LoadModelRequest, args_cfg: IngressArgs) -> float:
    if body.load_timeout_s is not None and body.load_timeout_s > args_cfg.model_load_timeout_s:
        raise InvalidRequestError(f"load_timeout_s may be at most this server's model_load_timeout_s "
                                  f"({args_cfg.model_load_timeout_s:g}).", param="load_timeout_s")
    return body.load_timeout_s or args_cfg.model_load_timeout_s


def weights_estimate(args: ModelAppArgs) -> int | None:
    try:
        return estimate_bytes(args)
    except SourceError as exc:
        raise _invalid_source(f"the weights do not parse: {exc}", code="invalid_weights") from None


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
               node_reports, used: dict[str, float],
               node_totals: Callable[[], list[dict[str, float]] | None] = ray_node_totals) -> tuple[int, LifecycleReply]:
    timeout_s = load_timeout(body, args_cfg)
    args = await asyncio.to_thread(resolve_args, body)  # reads the model's files: off the event loop
    await directory.refresh(max_age_s=0.5)
    check_name(body.model, directory)
    await check_model_fallbacks(body.model, args, directory)
    check_resources(args, await asyncio.to_thread(node_totals))
    weights_bytes = await asyncio.to_thread(weights_estimate, args)
    if weights_bytes is not None and node_reports is not None:
        free = node_free_memory(await node_reports())
        if free is not None and weights_bytes > free:
            raise ConflictError(f"Model '{body.model}' needs about {gb(weights_bytes)} for its weights, but the node with the "
                                f"most free memory has {gb(free)}.", code="insufficient_memory")
    record = RuntimeModel(model=body.model, args=args.model_dump(mode="json", exclude_defaults=True),
                          autoscaling=body.autoscaling, requested_at=time.time(), estimated_bytes=weights_bytes,
                          load_timeout_s=timeout_s)
    budget = int(args_cfg.model_memory_budget_gb * GB) if args_cfg.model_memory_budget_gb else None
    # A config alias's model is never evicted to make room (the state keeps the run-time ones' too).
    busy = sorted({*busy_models(directory, used), *directory.config_aliases.values()})
    result = await state.models_load(record, busy, args_cfg.max_loaded_models, budget, timeout_s=5.0)
    if "error" in result:
        raise ConflictError(result["error"]["message"], param="model" if result["error"]["code"] == "alias_exists"
                            else None, code=result["error"]["code"])
    stored = RuntimeModel.model_validate(result["record"])
    directory.runtime[stored.model] = stored  # /v1/models here shows it at once; the others at their next sync
    for name in result["evicted"]:
        if name in directory.runtime:
            directory.runtime[name] = directory.runtime[name].model_copy(update={"state": "unloading"})
    reply = LifecycleReply(model=stored.model, status=stored.state, message=stored.error, evicted=result["evicted"],
                           estimated_bytes=stored.estimated_bytes)
    return (200 if stored.state == "ready" else 202), reply


async def unload(model: str, *, directory: ModelDirectory, state: StateClient) -> LifecycleReply:
    pointing = sorted(alias for alias, target in directory.config_aliases.items() if target == model)
    if pointing:
        raise ConflictError(f"Alias '{pointing[0]}' of the config file points at model '{model}'.", param="model",
                            code="model_has_alias")
    result = await state.models_unload(model, timeout_s=5.0)
    if result is not None and "refused" in result:
        raise ConflictError(result["refused"]["message"], param="model", code=result["refused"]["code"])
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
