"""What a run-time model's replica asks of a node (CPUs, GPUs, custom resources), checked two
ways: against each node's total, which no wait can raise (a load no node can ever place is a
400 at once), and against what each node has free now (a replica Ray has not placed for want of
it is `pending`, with that reason, until it is placed or its load times out)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from contract.config import ModelAppArgs

GPU_HARDWARE = frozenset({"cuda", "rocm"})


def replica_needs(args: ModelAppArgs) -> dict[str, float]:
    """Ray resources per replica as the placement asks for them: CPUs always, custom resources,
    and GPUs only when the model may run on nothing but GPUs (a list with a CPU platform in it
    falls back to that platform, which reserves no GPU)."""
    needs = {"CPU": float(args.num_cpus), **{name: float(amount) for name, amount in args.resources.items()}}
    if set(args.hardware_preference) <= GPU_HARDWARE:
        needs["GPU"] = float(1.0 if args.num_gpus is None else args.num_gpus)
    return {name: amount for name, amount in needs.items() if amount > 0}


def fits(needs: Mapping[str, float], node: Mapping[str, float]) -> bool:
    return all(node.get(name, 0.0) >= amount for name, amount in needs.items())


def short_of(needs: Mapping[str, float], nodes: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Of `needs`, what no single node offers in full: {} when some node fits them all; otherwise
    each need that the best-provided node lacks, with the most any node has of it."""
    nodes = list(nodes)
    if any(fits(needs, node) for node in nodes):
        return {}
    return {name: max((node.get(name, 0.0) for node in nodes), default=0.0)
            for name, amount in needs.items() if not any(node.get(name, 0.0) >= amount for node in nodes)} or {
        name: max((node.get(name, 0.0) for node in nodes), default=0.0) for name in needs}


def describe(resources: Mapping[str, float]) -> str:
    return ", ".join(f"{name} {amount:g}" for name, amount in sorted(resources.items())) or "nothing"
