"""`make bench`: raw engines in-process, then the server over HTTP, in one run; prints the
server/raw ratios against the targets and writes bench/results/<date>.json.

Runs one phase at a time (the raw engine is shut down before the server starts) so the
phases do not compete for the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import sys
from pathlib import Path

from . import http_load, raw, server

ROOT = server.ROOT


def say(message: str) -> None:
    print(f"[bench] {message}", flush=True)


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--rounds", type=int, default=6, help="requests per client in each chat measurement")
    parser.add_argument("--seconds", type=float, default=15.0, help="duration of each embedding measurement")
    parser.add_argument("--latency-requests", type=int, default=300, help="sequential requests per latency p50")
    parser.add_argument("--config", default=str(ROOT / "serve_config.yaml"))
    args = parser.parse_args()
    results: dict = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }

    say("raw OpenVINO continuous-batching engine, in-process")
    raw_chat = raw.chat_engine_runs([1, 16], args.rounds, say)
    raw_burst = raw.chat_engine_runs([16], args.rounds, say, steady=False)[16]
    say("raw OpenVINO encoder, in-process")
    raw_embed = raw.embedding_engine_runs([1, 32], args.seconds, say)

    say("starting the server (hfserve serve: the default config, plus a gateway-less ingress at /plain)")
    running = server.start(server.with_plain_ingress(Path(args.config)))
    base, auth, ready_s = running.base, running.headers, running.ready_s
    say(f"ready in {ready_s:.1f}s")
    try:
        say("server: chat c=1, c=16 (streaming)")
        http_chat = {c: asyncio.run(http_load.chat_run(base, c, args.rounds, headers=auth)) for c in (1, 16)}
        http_burst = asyncio.run(http_load.chat_run(base, 16, args.rounds, steady=False, headers=auth))
        say("server: embeddings c=32 x 1 input, c=4 x 32 inputs")
        http_embed_single = asyncio.run(http_load.embedding_run(base, 32, 1, args.seconds, headers=auth))
        http_embed_batch = asyncio.run(http_load.embedding_run(base, 4, 32, args.seconds, headers=auth))
        say("server: gateway latencies at c=1 (cache miss with and without the gateway, cache hit, no-ops)")
        miss_on, miss_off = asyncio.run(http_load.paired_latency_p50(
            (base, auth, http_load.embed_unique), (base + server.PLAIN_PREFIX, {}, http_load.embed_unique),
            args.latency_requests))
        hit, post_noop = asyncio.run(http_load.paired_latency_p50(
            (base, auth, http_load.chat_cached), (base, auth, http_load.rejected_post), args.latency_requests))
        noop = asyncio.run(http_load.latency_p50(base, args.latency_requests, http_load.health, auth))
    finally:
        running.stop()

    results["raw"] = {
        "chat": {str(c): r.as_dict() for c, r in raw_chat.items()},
        "chat_burst16": raw_burst.as_dict(),
        "embeddings": {f"batch{b}": r.as_dict() for b, r in raw_embed.items()},
    }
    results["server"] = {
        "ready_s": round(ready_s, 1),
        "chat": {str(c): r.as_dict() for c, r in http_chat.items()},
        "chat_burst16": http_burst.as_dict(),
        "embeddings": {"c32x1": http_embed_single.as_dict(), "c4x32": http_embed_batch.as_dict()},
        "gateway_p50_ms": {
            "embed_miss_gateway_on": round(miss_on, 2),
            "embed_miss_gateway_off": round(miss_off, 2),
            "chat_cache_hit": round(hit, 2),
            "noop_post_rejected": round(post_noop, 2),
            "noop_get_health": round(noop, 2),
        },
    }
    targets = {
        "chat_c16_tokens_ratio": (ratio(http_chat[16].tokens_per_s, raw_chat[16].tokens_per_s), ">=", 0.8),
        "chat_ttft_p50_c16_over_c1": (ratio(http_chat[16].ttft_p50_ms, http_chat[1].ttft_p50_ms), "<=", 3.0),
        "embed_c4x32_vs_raw_batch32": (ratio(http_embed_batch.inputs_per_s, raw_embed[32].inputs_per_s), ">=", 0.85),
        "ready_s_warm": (round(ready_s, 1), "<=", 90.0),
        "gateway_overhead_ms_p50": (round(miss_on - miss_off, 2), "<=", 3.0),
        "cache_hit_over_noop_p50": (ratio(hit, post_noop), "<=", 1.5),
    }
    results["ratios"] = {
        **{name: value for name, (value, _, _) in targets.items()},
        "chat_c1_tokens_ratio": ratio(http_chat[1].tokens_per_s, raw_chat[1].tokens_per_s),
        "embed_c32x1_vs_raw_batch32": ratio(http_embed_single.inputs_per_s, raw_embed[32].inputs_per_s),
        "chat_burst16_tokens_ratio": ratio(http_burst.tokens_per_s, raw_burst.tokens_per_s),
        "chat_burst16_ttft_p50_over_c1": ratio(http_burst.ttft_p50_ms, http_chat[1].ttft_p50_ms),
    }
    results["targets_met"] = {
        name: (value >= bound if op == ">=" else value <= bound) for name, (value, op, bound) in targets.items()
    }

    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{datetime.date.today().isoformat()}.json"
    out.write_text(json.dumps(results, indent=2))

    print()
    print("| measurement | raw engine | server | ratio |")
    print("|---|---|---|---|")
    for c in (1, 16):
        print(f"| chat tok/s, c={c} | {raw_chat[c].tokens_per_s:.0f} | {http_chat[c].tokens_per_s:.0f} | "
              f"{ratio(http_chat[c].tokens_per_s, raw_chat[c].tokens_per_s)} |")
        print(f"| chat TTFT p50/p99 ms, c={c} | {raw_chat[c].ttft_p50_ms:.0f}/{raw_chat[c].ttft_p99_ms:.0f} | "
              f"{http_chat[c].ttft_p50_ms:.0f}/{http_chat[c].ttft_p99_ms:.0f} | |")
    print(f"| chat tok/s, 16 arriving at once (burst) | {raw_burst.tokens_per_s:.0f} | {http_burst.tokens_per_s:.0f} | "
          f"{ratio(http_burst.tokens_per_s, raw_burst.tokens_per_s)} |")
    print(f"| chat TTFT p50/p99 ms, burst of 16 | {raw_burst.ttft_p50_ms:.0f}/{raw_burst.ttft_p99_ms:.0f} | "
          f"{http_burst.ttft_p50_ms:.0f}/{http_burst.ttft_p99_ms:.0f} | |")
    print(f"| embeddings inputs/s, c=32 x 1 | {raw_embed[1].inputs_per_s:.0f} (batch 1) | {http_embed_single.inputs_per_s:.0f} | "
          f"{ratio(http_embed_single.inputs_per_s, raw_embed[32].inputs_per_s)} vs batch 32 |")
    print(f"| embeddings inputs/s, c=4 x 32 | {raw_embed[32].inputs_per_s:.0f} (batch 32) | {http_embed_batch.inputs_per_s:.0f} | "
          f"{ratio(http_embed_batch.inputs_per_s, raw_embed[32].inputs_per_s)} |")
    print(f"| hfserve serve to ready (warm cache), s | | {ready_s:.1f} | |")
    print(f"| p50 ms, c=1: embedding miss, gateway on / off | | {miss_on:.1f} / {miss_off:.1f} | +{miss_on - miss_off:.1f} ms |")
    print(f"| p50 ms, c=1: chat cache hit / POST no-op (same route, refused) | | {hit:.1f} / {post_noop:.1f} | {ratio(hit, post_noop)} |")
    print(f"| p50 ms, c=1: GET /health (no body to fetch) | | {noop:.1f} | {ratio(hit, noop)} |")
    print()
    for name, (value, op, bound) in targets.items():
        print(f"{'PASS' if results['targets_met'][name] else 'MISS'} {name} = {value} (target {op} {bound})")
    print(f"\nwritten: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
