"""The model-application builder, and where a model is placed: its replicas' Ray actor options
come from its `hardware`, `num_cpus`, `num_gpus` and `resources` args and what the nodes have
(hardware/placement.py), a GPU's share sized from the model's estimated memory; hardware or
resources no node has, or a model no GPU can hold, fail the deploy naming them. The
run-time lifecycle builds its applications here too. A `ray_actor_options` block in the model's
`deployments` entry replaces these options as a whole (Ray's rule, applied after the builder):
the builder reads it and fails the deploy, naming the model and the field, unless it is
compatible and spells out every option it changes (hardware/placement.py, check_actor_options).

No `from __future__ import annotations`: Ray reads the builder's annotation at run time.
"""

import dataclasses
import logging

import ray
from ray.serve import Application

from contract.config import ModelAppArgs, check_fallbacks, model_call_env_vars, read_env
from contract.lifecycle import RuntimeModel
from deployments.server import model_server_deployment
from deployments.task_inference import with_task
from hardware.detect import detect
from hardware.placement import (
    Placement,
    PlacementError,
    check_actor_options,
    place,
    unknown_resources,
)
from hardware.probe import cluster_reports
from hardware.select import GPU_PLATFORMS
from serve_app.config_overrides import deployed_actor_options, deployed_model_configs
from serve_app.state.lifecycle.memory import gpu_memory_need

logger = logging.getLogger("ray.serve")


def build_model_app(args: ModelAppArgs) -> Application:
    # A model without `task` gets the one its files name (or the deploy fails saying why).
    configs = deployed_model_configs() if ray.is_initialized() else {}
    deployed = deployed_actor_options(args, configs)  # before with_env: as deployed
    args = with_task(args.with_env(read_env()))
    name = deployed[0][0] if len(deployed) == 1 else None  # several with these args: the source names it
    if name is not None:
        check_config_fallbacks(name, args, {other: dict(config.args or {}) for other, config in configs.items()})
    placement = place_model(args, name)
    logger.info("model %s from %s: planned for %s on %s%s", name or "", args.source, placement.platform,
                ", ".join(placement.nodes), f"; {placement.sizing}" if placement.sizing else "")
    if len(deployed) == 1 and deployed[0][1] is not None:  # Ray will apply the block instead, as a whole
        nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
        options = check_actor_options(name, placement.platform, placement.ray_actor_options, deployed[0][1], nodes)
        logger.info("model %s: its deployments entry's ray_actor_options %s replace placement's %s (compatible)",
                    name, deployed[0][1], placement.ray_actor_options)
        placement = dataclasses.replace(placement, ray_actor_options=options)
    elif any(given is not None for _, given in deployed):
        # Several applications with these very args: which one is being built cannot be told, so
        # their blocks go unchecked (Ray applies them; an unplaceable replica shows in /ready).
        logger.warning("applications %s have the same args and ray_actor_options: their options are not "
                       "checked; give each its own args", [app for app, _ in deployed])
    return model_server_deployment().options(ray_actor_options=_actor_options(placement)).bind(args)


def check_config_fallbacks(name: str, args: ModelAppArgs, deployed: dict[str, dict]) -> None:
    """A config-file model's fallbacks are models of the same config and task (FallbackConfigError,
    naming the field, fails the deploy). Another model's task is read from its args, or from its
    files when they omit it, and only for the models named; one that cannot be told is not compared."""
    named = set(args.fallbacks) | set(args.context_fallbacks)
    task_of: dict[str, str | None] = {}
    for other in named & deployed.keys():
        try:
            other_args = ModelAppArgs.model_validate(deployed[other])
            task_of[other] = other_args.task or with_task(other_args).task
        except ValueError:  # its own build says what is wrong with it
            task_of[other] = None
    check_fallbacks(name, args, task_of)


def build_runtime_model_app(record: RuntimeModel) -> Application:
    """A model loaded at run time (POST /models/load): the same application as a config-file
    model's, with the autoscaling the load asked for (one replica when it asked for none)."""
    args = with_task(ModelAppArgs.model_validate(record.args).with_env(read_env()))  # as build_model_app
    placement = place_model(args, record.model)
    scaling = ({"autoscaling_config": record.autoscaling.serve_config()} if record.autoscaling is not None
               else {"num_replicas": 1})
    return model_server_deployment().options(ray_actor_options=_actor_options(placement), **scaling).bind(args)


def _actor_options(placement: Placement) -> dict:
    # Ray adds these to the env_vars of the application's runtime_env.
    return {**placement.ray_actor_options, "runtime_env": {"env_vars": model_call_env_vars()}}


def place_model(args: ModelAppArgs, name: str | None = None) -> Placement:
    # Without the application's name (serve.run), the source names the model in errors.
    model = name or args.source
    if ray.is_initialized():
        reports = cluster_reports()
        nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
        missing = unknown_resources(args.resources, nodes)
        if missing:
            raise PlacementError(
                f"model '{model}': no node has the resources {missing}; start a node with "
                f"`ray start --resources '{{...}}'` or change the model's resources"
            )
    else:
        reports = [detect()]
    # Only a GPU placement without num_gpus uses the estimate: a CPU cluster never reads the weights here.
    sized = args.num_gpus is None and any(r.available(p) for r in reports for p in GPU_PLATFORMS)
    return place(model, args.hardware_preference, args.backend, reports, num_cpus=args.num_cpus,
                 num_gpus=args.num_gpus, resources=args.resources, memory=gpu_memory_need(args) if sized else None)
