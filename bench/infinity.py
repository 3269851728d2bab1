"""Infinity, the embeddings peer of `make bench`, in each configuration a user could pick on a
CPU: its torch engine in float32 (its CPU default) and in bfloat16, and its optimum engine
(ONNX Runtime) on an ONNX export of the same MiniLM directory. Each configuration runs the server
phase's two embedding loads for the same seconds, one at a time.

The hfserve/Infinity ratios, and the targets on them, are taken against the fastest
configuration for each metric (highest rate, lowest p99), so a target holds against the best
Infinity a user could run, not its default; the results name which configuration that was.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

from . import http_load, peers
from .stats import EmbeddingRun, ratio


@dataclass(frozen=True)
class InfinityConfig:
    name: str  # the key in the results and the table
    engine: str  # infinity_emb v2 --engine
    dtype: str | None  # --dtype; None where the engine takes none
    precision: str  # what the model computes in
    runtime: str  # what runs the model


CONFIGS = (
    InfinityConfig("torch-float32", "torch", "float32", "float32", "PyTorch, SDPA attention"),
    InfinityConfig("torch-bfloat16", "torch", "bfloat16", "bfloat16", "PyTorch, SDPA attention"),
    # The optimum engine reads no --dtype: it runs the export's float32 graph.
    InfinityConfig("optimum-float32", "optimum", None, "float32", "ONNX Runtime, CPUExecutionProvider"),
)


@dataclass
class InfinityRun:
    config: InfinityConfig
    ready_s: float
    embed_single: EmbeddingRun  # c=32 x 1 input, as the server phase
    embed_batch: EmbeddingRun  # c=4 x 32 inputs
    details: dict = field(default_factory=dict)  # peers.RunningPeer.details


# metric: (load, EmbeddingRun attribute, higher is better). The keys name the ratios as the
# results have always named them: <metric>_vs_infinity.
METRICS = {
    "embed_c32x1_req_per_s": ("embed_single", "requests_per_s", True),
    "embed_c32x1_inputs_per_s": ("embed_single", "inputs_per_s", True),
    "embed_c32x1_p99": ("embed_single", "latency_p99_ms", False),
    "embed_c4x32_req_per_s": ("embed_batch", "requests_per_s", True),
    "embed_c4x32_inputs_per_s": ("embed_batch", "inputs_per_s", True),
    "embed_c4x32_p99": ("embed_batch", "latency_p99_ms", False),
}
TARGETS = {"embed_c32x1_req_per_s": (">=", 1.2), "embed_c32x1_p99": ("<=", 1.5), "embed_c4x32_inputs_per_s": (">=", 2.0)}


def value(side, metric: str) -> float:
    """`metric` of an InfinityRun or of the server phase (anything with embed_single and embed_batch)."""
    load, attribute, _ = METRICS[metric]
    return getattr(getattr(side, load), attribute)


def fastest(runs: list[InfinityRun]) -> dict[str, InfinityRun]:
    """The best configuration for each metric (a NaN, a load that completed nothing, never wins)."""
    best = {}
    for metric, (_, _, higher) in METRICS.items():
        candidates = [run for run in runs if not math.isnan(value(run, metric))]
        if candidates:
            best[metric] = (max if higher else min)(candidates, key=lambda run, m=metric: value(run, m))
    return best


def against(runs: list[InfinityRun]) -> dict[str, str]:
    """Each ratio's name (<metric>_vs_infinity) and the configuration it is taken against."""
    return {f"{metric}_vs_infinity": run.config.name for metric, run in fastest(runs).items()}


def ratios(server, runs: list[InfinityRun]) -> dict[str, float]:
    """hfserve over Infinity's fastest configuration, per metric: above 1 is hfserve ahead for
    rates, below 1 for p99. With the same inputs per request on both sides, req/s and inputs/s
    ratios are equal; both are kept so each reads on its own."""
    return {f"{metric}_vs_infinity": ratio(value(server, metric), value(run, metric))
            for metric, run in fastest(runs).items()}


def targets(server, runs: list[InfinityRun]) -> dict[str, tuple[float, str, float]]:
    found = ratios(server, runs)
    return {f"{metric}_vs_infinity": (found[f"{metric}_vs_infinity"], op, bound)
            for metric, (op, bound) in TARGETS.items() if f"{metric}_vs_infinity" in found}


def measure(seconds: float, say, configs: tuple[InfinityConfig, ...] = CONFIGS) -> tuple[list[InfinityRun], dict[str, str]]:
    """Each configuration in turn (started, measured, stopped); ([runs], {name: error}). One that
    fails leaves the others' figures; all failing raises."""
    model_dir = peers.embed_model_dir()
    runs, errors = [], {}
    for config in configs:
        try:
            runs.append(_measure_one(config, model_dir, seconds, say))
        except Exception as error:  # noqa: BLE001 - one configuration's broken start must not cost the others
            errors[config.name] = f"{type(error).__name__}: {error}"
            say(f"infinity {config.name} failed, continuing without it: {errors[config.name]}")
    if not runs:
        raise RuntimeError("every Infinity configuration failed: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))
    return runs, errors


def _measure_one(config: InfinityConfig, model_dir, seconds: float, say) -> InfinityRun:
    say(f"peer: Infinity ({peers.INFINITY_SPEC}) {config.name}: {config.runtime}, {config.precision}, CPU, "
        "on the MiniLM directory hfserve serves")
    log = peers.RESULTS / f"infinity-{config.name}.log"
    running = peers.start_infinity(model_dir, engine=config.engine, dtype=config.dtype, log=log, say=say)
    say(f"infinity {config.name} ready in {running.ready_s:.1f}s (log: {log})")
    try:
        say(f"infinity {config.name}: embeddings c=32 x 1 input, c=4 x 32 inputs")
        single = asyncio.run(http_load.embedding_run(running.base, 32, 1, seconds))
        batch = asyncio.run(http_load.embedding_run(running.base, 4, 32, seconds))
    finally:
        running.stop()
    return InfinityRun(config, running.ready_s, single, batch, running.details)


def results(server, runs: list[InfinityRun], errors: dict[str, str]) -> dict:
    """The peer's entry in the results: one per configuration, each with hfserve's ratios over
    it, and which configuration was the fastest for each metric (the one the ratios and targets
    in `ratios` are against)."""
    configs = {}
    for run in runs:
        c = run.config
        configs[c.name] = {
            "engine": c.engine, "dtype_flag": c.dtype, "precision": c.precision, "runtime": c.runtime, **run.details,
            "ready_s": round(run.ready_s, 1),
            "embeddings": {"c32x1": run.embed_single.as_dict(), "c4x32": run.embed_batch.as_dict()},
            "hfserve_over": {metric: ratio(value(server, metric), value(run, metric)) for metric in METRICS},
        }
    out = {"server": peers.INFINITY_SPEC, "device": "cpu", "configs": configs,
           "fastest": {metric: run.config.name for metric, run in fastest(runs).items()}}
    if errors:
        out["errors"] = errors
    return out


def print_table(server, server_engine: dict, runs: list[InfinityRun], errors: dict[str, str]) -> None:
    """hfserve beside every configuration, and hfserve over the fastest (named) per metric."""
    best = fastest(runs)
    names = " | ".join(f"infinity {run.config.name}" for run in runs)
    print(f"\n| embeddings, same client and seconds | hfserve | {names} | hfserve / fastest infinity |")
    print("|---|---|" + "---|" * len(runs) + "---|")

    def over(metric: str) -> str:
        if metric not in best:
            return ""
        return f"{ratio(value(server, metric), value(best[metric], metric))} ({best[metric].config.name})"

    for label, load, key in (("c=32 x 1", "embed_single", "c32x1"), ("c=4 x 32", "embed_batch", "c4x32")):
        sides = [getattr(server, load)] + [getattr(run, load) for run in runs]
        print(f"| {label}: req/s | " + " | ".join(f"{s.requests_per_s:.1f}" for s in sides)
              + f" | {over(f'embed_{key}_req_per_s')} |")
        print(f"| {label}: inputs/s | " + " | ".join(f"{s.inputs_per_s:.0f}" for s in sides)
              + f" | {over(f'embed_{key}_inputs_per_s')} |")
        p99 = f"p99 {over(f'embed_{key}_p99')}" if f"embed_{key}_p99" in best else ""
        print(f"| {label}: p50/p99 ms | " + " | ".join(f"{s.latency_p50_ms:.0f}/{s.latency_p99_ms:.0f}" for s in sides)
              + f" | {p99} |")
    print(f"| engine, precision | {server_engine.get('engine')}, {server_engine.get('precision')} | "
          + " | ".join(f"{run.config.engine} ({run.config.runtime}), {run.config.precision}" for run in runs) + " | |")
    print(f"| to ready (warm), s | {server.ready_s:.1f} | " + " | ".join(f"{run.ready_s:.1f}" for run in runs) + " | |")
    for name, error in errors.items():
        print(f"(infinity {name} failed: {error})")
