"""What the metrics cost: chat c=16 (streaming) and embeddings c=32 throughput with metrics off
and on (HF_SERVER_ENABLE_METRICS, which turns recording off in the ingress and every model
replica), in one run.

The server is started once per mode, alternating off/on `pairs` times, so that a slow spell
of a shared machine lands on both modes; each mode's figure is its median. Part of
`make bench`; alone: `python -m bench.metrics_cost`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hardware.detect import cpu_info

from . import http_load, server

TARGET_COST = 0.02  # metrics may cost at most 2% of either throughput


@dataclass
class ModeRuns:
    chat_tokens_per_s: list[float] = field(default_factory=list)
    embed_inputs_per_s: list[float] = field(default_factory=list)

    def medians(self) -> dict[str, float]:
        return {"chat_c16_tokens_per_s": round(statistics.median(self.chat_tokens_per_s), 1),
                "embed_c32_inputs_per_s": round(statistics.median(self.embed_inputs_per_s), 1)}


def measure_once(config: Path, metrics_on: bool, rounds: int, seconds: float, say) -> tuple[float, float]:
    os.environ["HF_SERVER_ENABLE_METRICS"] = "true" if metrics_on else "false"
    try:
        running = server.start(config, log_name=f"server-metrics-{'on' if metrics_on else 'off'}.log")
    finally:
        del os.environ["HF_SERVER_ENABLE_METRICS"]
    try:
        chat = asyncio.run(http_load.chat_run(running.base, 16, rounds, headers=running.headers))
        embed = asyncio.run(http_load.embedding_run(running.base, 32, 1, seconds, headers=running.headers))
    finally:
        running.stop()
    say(f"metrics {'on ' if metrics_on else 'off'}: chat c=16 {chat.tokens_per_s:.0f} tok/s, "
        f"embeddings c=32 {embed.inputs_per_s:.0f} inputs/s")
    return chat.tokens_per_s, embed.inputs_per_s


def measure(config: Path, pairs: int, rounds: int, seconds: float, say) -> dict:
    modes = {False: ModeRuns(), True: ModeRuns()}
    for _ in range(pairs):
        for metrics_on in (False, True):
            chat, embed = measure_once(config, metrics_on, rounds, seconds, say)
            modes[metrics_on].chat_tokens_per_s.append(chat)
            modes[metrics_on].embed_inputs_per_s.append(embed)
    off, on = modes[False].medians(), modes[True].medians()
    cost = {name: round(1 - on[name] / off[name], 4) if off[name] else float("nan") for name in off}
    return {
        "cpu": cpu_info().model, "pairs": pairs,
        "off": off, "on": on, "runs": {"off": modes[False].__dict__, "on": modes[True].__dict__},
        "cost": cost, "target": TARGET_COST,
        "met": {name: value <= TARGET_COST for name, value in cost.items()},
    }


def print_table(result: dict) -> None:
    print(f"\nMetrics cost, CPU: {result['cpu']} (median of {result['pairs']} runs per mode)\n")
    print("| throughput | metrics off | metrics on | cost |")
    print("|---|---|---|---|")
    for name in result["off"]:
        print(f"| {name} | {result['off'][name]} | {result['on'][name]} | {result['cost'][name] * 100:.1f}% |")
    for name, met in result["met"].items():
        print(f"{'PASS' if met else 'MISS'} metrics_cost_{name} = {result['cost'][name]} (target <= {TARGET_COST})")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.metrics_cost")
    parser.add_argument("--pairs", type=int, default=2, help="off/on server runs")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--config", default=str(server.ROOT / "serve_config.yaml"))
    parser.add_argument("--out", default=str(server.ROOT / "bench" / "results" / "metrics-cost.json"))
    args = parser.parse_args()
    result = measure(Path(args.config), args.pairs, args.rounds, args.seconds, lambda m: print(f"[bench] {m}", flush=True))
    Path(args.out).write_text(json.dumps(result, indent=2))
    print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
