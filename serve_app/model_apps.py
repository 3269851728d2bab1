"""The model-application builder, and where a model is placed: its replicas' Ray actor options
come from its `hardware`, `num_cpus`, `num_gpus` and `resources` args and what the nodes have
(hardware/placement.py), a GPU's share sized from the model's estimated memory; hardware or
resources no node has, or a model no GPU can hold, fail the deploy naming them. The
run-time lifecycle builds its applications here too. A `ray_actor_options` block in the YAML
replaces these options as a whole (Ray's rule): prefer the args.

No `from __future__ import annotations`: Ray reads the builder's annotation at run time.
"""

import logging

import ray
from ray.serve import Application

from contract.config import ModelAppArgs, model_call_env_vars, read_env
from contract.lifecycle import RuntimeModel
from deployments.server import model_server_deployment
from deployments.task_inference import with_task
from hardware.detect import detect
from hardware.placement import Placement, PlacementError, place, unknown_resources
from hardware.probe import cluster_reports
from hardware.select import GPU_PLATFORMS
from serve_app.state.lifecycle.memory import gpu_memory_need

logger = logging.getLogger("ray.serve")


def build_model_app(args: ModelAppArgs) -> Application:
    # A model without `task` gets the one its files name (or the deploy fails saying why).
    args = with_task(args.with_env(read_env()))
    placement = place_model(args)
    logger.info("model from %s: planned for %s on %s%s", args.source, placement.platform, ", ".join(placement.nodes),
                f"; {placement.sizing}" if placement.sizing else "")
    return model_server_deployment().options(ray_actor_options=_actor_options(placement)).bind(args)


def build_runtime_model_app(record: RuntimeModel) -> Application:
    """A model loaded at run time (POST /models/load): the same application as a config-file
    model's, with the autoscaling the load asked for (one replica when it asked for none)."""
    args = with_task(ModelAppArgs.model_validate(record.args).with_env(read_env()))  # as build_model_app
    placement = place_model(args)
    scaling = ({"autoscaling_config": record.autoscaling.serve_config()} if record.autoscaling is not None
               else {"num_replicas": 1})
    return model_server_deployment().options(ray_actor_options=_actor_options(placement), **scaling).bind(args)


def _actor_options(placement: Placement) -> dict:
    # Ray adds these to the env_vars of the application's runtime_env.
    return {**placement.ray_actor_options, "runtime_env": {"env_vars": model_call_env_vars()}}


def place_model(args: ModelAppArgs) -> Placement:
    # The builder does not know the application's name; Serve's DEPLOY_FAILED message adds it.
    model = args.source
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
