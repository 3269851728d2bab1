"""Deploy-time placement: from the model's hardware preference and every node's report, the
platform the model is planned for and the Ray actor options that put its replicas on a node
that has it. Pure: the builder (serve_app/model_apps.py) passes the reports of the per-node actors.

Ray schedules GPUs as a resource, so a cuda or rocm model gets `num_gpus`: the share of one GPU
its estimated memory needs (so several models pack onto one GPU), or the `num_gpus` it sets. The
other platforms are not Ray resources: they are checked here against the nodes that exist, and
pinned, where a model needs it, with custom `resources`. The replica confirms the choice (select.py).
A `ray_actor_options` block in the model's `deployments` entry is checked against all this
(check_actor_options): Ray applies it after the builder, in place of placement's options.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .report import NodeReport
from .select import (
    ENGINES,
    GPU_PLATFORMS,
    BackendUnavailableError,
    check_supported,
    engine_platforms,
)

GIB = 2**30
DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}
# Every replica is a torch process with its own CUDA context, cuBLAS workspace and kernels.
CONTEXT_BYTES = 1 * GIB
# A model without a KV cache (an encoder, a classifier) holds a batch's activations instead.
MIN_ACTIVATION_BYTES = GIB // 4
# Shares are rounded up to this step: a little headroom, and at most 1 / GPU_STEP replicas a GPU.
GPU_STEP = 0.05


class PlacementError(BackendUnavailableError):
    """No node of the cluster can run the model as configured; the message names both."""


@dataclass(frozen=True)
class MemoryNeed:
    """What one replica holds in GPU memory besides its CUDA context: its weights (the parameter
    count, at the dtype of the platform it is placed on) and its KV cache, or, for a model
    without one, its activations: a quarter of its weights, at least MIN_ACTIVATION_BYTES."""

    parameters: int
    kv_cache_bytes: int = 0

    def parts(self, dtype: str) -> dict[str, int]:
        weights = self.parameters * DTYPE_BYTES.get(dtype, 4)
        reserve = ({"KV cache": self.kv_cache_bytes} if self.kv_cache_bytes
                   else {"activations": max(MIN_ACTIVATION_BYTES, weights // 4)})
        return {f"weights in {dtype}": weights, **reserve, "CUDA context": CONTEXT_BYTES}


@dataclass(frozen=True)
class Placement:
    platform: str
    nodes: tuple[str, ...]  # hostnames (node ids where known) that have it
    ray_actor_options: dict[str, Any]
    sizing: str = ""  # how num_gpus was chosen, for the deploy log


def _node_name(report: NodeReport) -> str:
    return f"{report.hostname} ({report.node_id[:8]})" if report.node_id else report.hostname


def _gib(size: float) -> str:
    return f"{size / GIB:.2f} GiB"


def gpu_share(model: str, platform: str, memory: MemoryNeed | None, reports: list[NodeReport]) -> tuple[float, str]:
    """`num_gpus` for a replica of `model` on `platform`: its estimated memory over the memory of
    the smallest such GPU of the cluster (Ray may start it on any of them), rounded up to GPU_STEP;
    a whole GPU when either figure is unknown. PlacementError when it fits no GPU at all."""
    gpus = [(device.total_memory_bytes, f"{device.name} on {_node_name(report)}")
            for report in reports if report.available(platform)
            for device in report.platforms[platform].devices if device.total_memory_bytes]
    if memory is None:
        return 1.0, "num_gpus 1: the model's size is not known before it loads (set num_gpus to share a GPU)"
    if not gpus:
        return 1.0, f"num_gpus 1: no node reported its {platform} GPU memory"
    parts = memory.parts(ENGINES[platform][2])
    need = sum(parts.values())
    breakdown = " + ".join(f"{name} {_gib(size)}" for name, size in parts.items())
    largest, largest_name = max(gpus)
    if need > largest:
        raise PlacementError(
            f"model '{model}': needs about {_gib(need)} of GPU memory ({breakdown}), more than the largest "
            f"{platform} GPU of the cluster has: {_gib(largest)} ({largest_name}). Choose a smaller model or "
            "kv_cache_gb, or a CPU platform; set num_gpus to place it regardless"
        )
    smallest, smallest_name = min(gpus)
    if need > smallest:
        return 1.0, (f"num_gpus 1: about {_gib(need)} ({breakdown}), more than the smallest {platform} GPU has "
                     f"({_gib(smallest)}, {smallest_name}); pin the model to larger ones with resources")
    share = min(1.0, round(math.ceil(need / smallest / GPU_STEP - 1e-9) * GPU_STEP, 2))
    return share, f"num_gpus {share:g}: about {_gib(need)} ({breakdown}) of {_gib(smallest)} ({smallest_name})"


def place(
    model: str,
    preference: tuple[str, ...],
    backend: str,
    reports: list[NodeReport],
    *,
    num_cpus: float,
    num_gpus: float | None = None,
    resources: dict[str, float] | None = None,
    memory: MemoryNeed | None = None,
) -> Placement:
    candidates = engine_platforms(backend, preference)
    if not candidates:
        raise PlacementError(f"model '{model}': backend '{backend}' cannot run on hardware {', '.join(preference)}")
    if not reports:
        raise PlacementError(f"model '{model}': no node reported its hardware, so nothing can be placed")
    strict = len(preference) == 1
    for platform in candidates:
        nodes = tuple(_node_name(r) for r in reports if r.available(platform))
        if strict:
            check_supported(model, platform, bool(nodes))
        if not nodes or platform not in ENGINES:
            continue
        # num_gpus is what a GPU placement reserves; a preference list that lands on a CPU
        # platform reserves none (a GPU it cannot use would only make it unschedulable).
        gpus, sizing = 0.0, ""
        if platform in GPU_PLATFORMS:
            gpus, sizing = ((num_gpus, f"num_gpus {num_gpus:g} as set") if num_gpus is not None
                            else gpu_share(model, platform, memory, reports))
            if gpus <= 0:
                raise PlacementError(f"model '{model}': hardware '{platform}' needs num_gpus > 0 (got {gpus:g})")
        options: dict[str, Any] = {"num_cpus": num_cpus}
        if gpus:
            options["num_gpus"] = gpus
        if resources:
            options["resources"] = dict(resources)
        return Placement(platform, nodes, options, sizing)
    have = sorted({p for r in reports for p, found in r.platforms.items() if found.available})
    raise PlacementError(
        f"model '{model}': no node has hardware {' or '.join(candidates)}"
        f" (the cluster's {len(reports)} node(s) have: {', '.join(have) or 'nothing'})"
    )


def unknown_resources(wanted: dict[str, float], node_resources: list[dict[str, float]]) -> dict[str, float]:
    """The custom resources no single node has enough of: such a replica would wait forever."""
    if not wanted:
        return {}
    for available in node_resources:
        if all(available.get(name, 0.0) >= amount for name, amount in wanted.items()):
            return {}
    return dict(wanted)


# Placement's fields of Ray's actor options, and what Serve reserves for each when a config's
# ray_actor_options leave it out (Serve's replica default is one CPU).
PLACEMENT_FIELDS = ("num_cpus", "num_gpus", "resources")
SERVE_DEFAULTS: dict[str, Any] = {"num_cpus": 1.0, "num_gpus": 0.0, "resources": {}}


def merge_actor_options(placed: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """Placement's actor options with a config's `ray_actor_options` over them: each field the
    config sets wins (`resources` as a whole: a pin replaces a pin), the others stay placement's."""
    return {**placed, **given}


def check_actor_options(model: str, platform: str, placed: dict[str, Any], given: dict[str, Any],
                        node_resources: list[dict[str, float]]) -> dict[str, Any]:
    """The options a replica of `model` gets when the config's `ray_actor_options` (`given`)
    replace placement's (`placed`) as a whole, as Ray applies them: their merge, where `given`
    is compatible and spells out every placement field it would change. PlacementError naming
    the model and each field otherwise, so that the deploy fails instead of never scheduling."""
    merged = merge_actor_options(placed, given)
    problems = []
    for field in PLACEMENT_FIELDS:
        if field in placed and field not in given and placed[field] != SERVE_DEFAULTS[field]:
            problems.append(
                f"it leaves out {field}, so Ray would reserve {_shown(field, SERVE_DEFAULTS[field])} per replica, not "
                f"the model's {_shown(field, placed[field])}: add `{field}: {placed[field]}` to it, or drop the block "
                f"and set {field} in the model's args")
    gpus = float(merged.get("num_gpus") or 0)
    if platform in GPU_PLATFORMS and "num_gpus" in given and gpus <= 0:
        problems.append(f"its num_gpus is {gpus:g}, but the model is placed on {platform}, which needs a GPU share")
    if platform not in GPU_PLATFORMS and gpus > 0:
        problems.append(f"its num_gpus reserves {gpus:g} GPU, but the model is placed on {platform}, which uses none "
                        "(set the model's hardware to cuda or rocm to run it on a GPU)")
    resources = dict(merged.get("resources") or {})
    asked = {"CPU": float(merged.get("num_cpus") or 0), "GPU": gpus, **resources}
    if node_resources and unknown_resources({name: n for name, n in asked.items() if n}, node_resources):
        problems.append(f"no node has all it asks for: num_cpus {asked['CPU']:g}, num_gpus {gpus:g}, resources "
                        f"{resources} (`ray status` shows what each node has)")
    if problems:
        raise PlacementError(
            f"model '{model}': the ray_actor_options of its deployments entry replace hfserve's placement as a "
            "whole (Ray's rule), and " + "; ".join(problems))
    return merged


def _shown(field: str, value: Any) -> str:
    if field == "resources":
        return f"resources {value}" if value else "no custom resources"
    return f"{float(value):g} {'CPU' if field == 'num_cpus' else 'GPU'}"

