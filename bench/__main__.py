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
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from . import http_load, raw

ROOT = Path(__file__).resolve().parents[1]


def say(message: str) -> None:
    print(f"[bench] {message}", flush=True)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(config: Path) -> tuple[subprocess.Popen, str, float, Path]:
    port = free_port()
    log_path = ROOT / "bench" / "results" / "server.log"
    env = {**os.environ, "HF_SERVER_PORT": str(port), "HF_SERVER_DASHBOARD_PORT": str(free_port()), "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "serve_app.cli", "serve", "--config", str(config)],
        cwd=ROOT, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited; see {log_path}")
        try:
            if httpx.get(f"{base}/ready", timeout=5).status_code == 200:
                return process, base, time.monotonic() - started, log_path
        except httpx.HTTPError:
            pass
        if time.monotonic() - started > 900:
            raise RuntimeError("server not ready after 900 s")
        time.sleep(0.5)


def stop_server(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--rounds", type=int, default=6, help="requests per client in each chat measurement")
    parser.add_argument("--seconds", type=float, default=15.0, help="duration of each embedding measurement")
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

    say("starting the server (hfserve serve)")
    process, base, ready_s, log_path = start_server(Path(args.config))
    say(f"ready in {ready_s:.1f}s")
    try:
        say("server: chat c=1, c=16 (streaming)")
        http_chat = {c: asyncio.run(http_load.chat_run(base, c, args.rounds)) for c in (1, 16)}
        http_burst = asyncio.run(http_load.chat_run(base, 16, args.rounds, steady=False))
        say("server: embeddings c=32 x 1 input, c=4 x 32 inputs")
        http_embed_single = asyncio.run(http_load.embedding_run(base, 32, 1, args.seconds))
        http_embed_batch = asyncio.run(http_load.embedding_run(base, 4, 32, args.seconds))
    finally:
        stop_server(process)

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
    }
    targets = {
        "chat_c16_tokens_ratio": (ratio(http_chat[16].tokens_per_s, raw_chat[16].tokens_per_s), ">=", 0.8),
        "chat_ttft_p50_c16_over_c1": (ratio(http_chat[16].ttft_p50_ms, http_chat[1].ttft_p50_ms), "<=", 3.0),
        "embed_c4x32_vs_raw_batch32": (ratio(http_embed_batch.inputs_per_s, raw_embed[32].inputs_per_s), ">=", 0.85),
        "ready_s_warm": (round(ready_s, 1), "<=", 90.0),
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
    print()
    for name, (value, op, bound) in targets.items():
        print(f"{'PASS' if results['targets_met'][name] else 'MISS'} {name} = {value} (target {op} {bound})")
    print(f"\nwritten: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
