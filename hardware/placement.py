"""Deploy-time placement: from the model's hardware preference and every node's report, the
platform the model is planned for and the Ray actor options that put its replicas on a node
that has it. Pure: the builder (serve_app/model_apps.py) passes the reports of the per-node actors.

Ray schedules GPUs as a resource, so a cuda or rocm model gets `num_gpus` (1 by default, or a
fraction to share one) and Ray puts it on a GPU node; the replica then confirms the choice on
its own node (select.py). The other platforms are not Ray resources: they are checked here
against the nodes that exist, and pinned, where a model needs it, with custom `resources`.
"""

from __future__ import annotations

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


class PlacementError(BackendUnavailableError):
    """No node of the cluster can run the model as configured; the message names both."""


@dataclass(frozen=True)
class Placement:
    platform: str
    nodes: tuple[str, ...]  # hostnames (node ids where known) that have it
    ray_actor_options: dict[str, Any]


def _node_name(report: NodeReport) -> str:
    return f"{report.hostname} ({report.node_id[:8]})" if report.node_id else report.hostname


def place(
    model: str,
    preference: tuple[str, ...],
    backend: str,
    reports: list[NodeReport],
    *,
    num_cpus: float,
    num_gpus: float | None = None,
    resources: dict[str, float] | None = None,
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
        gpus = (1.0 if num_gpus is None else num_gpus) if platform in GPU_PLATFORMS else 0.0
        if platform in GPU_PLATFORMS and gpus <= 0:
            raise PlacementError(f"model '{model}': hardware '{platform}' needs num_gpus > 0 (got {gpus:g})")
        options: dict[str, Any] = {"num_cpus": num_cpus}
        if gpus:
            options["num_gpus"] = gpus
        if resources:
            options["resources"] = dict(resources)
        return Placement(platform, nodes, options)
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
