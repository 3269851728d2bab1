"""`python -m bench.burst_ttft`: where the time to first token of 16 streams arriving at once goes.

The same burst as `make bench` (16 streamed chats of the bench's prompts, all sent at once,
`--rounds` times per client), against the raw engine in-process and then `hfserve serve` (the
default config). For each server request the client notes when the role chunk arrived (the
replica sends it after the chat template and tokenization, before the engine sees the prompt:
the request's way in and the chunk's way out, with no inference) and when the first content
did; the ingress's and the replica's own histograms (read from /metrics before and after)
give Serve's queue wait and the replica's time to first token (from the prompt's tokenization
to the engine's first token). Prints medians per step next to the raw engine's TTFT for the
same burst and writes bench/results/burst-ttft-<date>.json. `--burst 1` does the same for one
stream at a time (the c=1 TTFT of `make bench`; burst-ttft-<date>-c1.json).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import statistics
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from contract.config import read_env
from hardware.detect import cpu_info

from . import raw, server
from .http_load import CONTENT_MARK, NO_CACHE
from .profile import cpu_seconds, processes, with_engine_cores
from .workload import CHAT_MODEL, NEW_TOKENS, chat_messages

BURST = 16
HISTOGRAMS = {  # metric -> what it measures, as docs/operations.md defines it
    "hf_server_request_queue_seconds": "Serve's queue (ingress call to the replica starting it)",
    "hf_server_time_to_first_token_seconds": "replica: tokenized prompt to the engine's first token",
}
METRICS_SETTLE_S = 25  # Ray's metrics agents report every 10 s and /metrics gathers them every 10 s


def say(message: str) -> None:
    print(f"[burst-ttft] {message}", flush=True)


async def _stream(client: httpx.AsyncClient, i: int) -> dict[str, float]:
    body = {"model": CHAT_MODEL, "messages": chat_messages(i % 64), "max_tokens": NEW_TOKENS, "temperature": 0,
            "stream": True}
    started = time.perf_counter()
    marks: dict[str, float] = {}
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=NO_CACHE) as response:
        response.raise_for_status()
        marks["headers"] = time.perf_counter() - started
        async for data in response.aiter_bytes():
            now = time.perf_counter() - started
            if "role" not in marks and b'"role":"assistant"' in data:
                marks["role"] = now
            if "content" not in marks and CONTENT_MARK.search(data):
                marks["content"] = now
    return marks


async def _bursts(base: str, headers: dict[str, str], rounds: int, burst: int = BURST) -> list[dict[str, float]]:
    limits = httpx.Limits(max_connections=burst + 4, max_keepalive_connections=burst + 4)
    samples: list[dict[str, float]] = []
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits, headers=headers) as client:
        for r in range(rounds):
            samples += await asyncio.gather(*(_stream(client, r * burst + i) for i in range(burst)))
            await asyncio.sleep(0.5)  # each round a burst of its own, as the first one of `make bench`
    return samples


def _histograms(base: str, headers: dict[str, str]) -> dict[str, tuple[float, float]]:
    text = httpx.get(f"{base}/metrics", headers=headers, timeout=30).text
    found: dict[str, tuple[float, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in HISTOGRAMS:
            continue
        total = count = 0.0
        for sample in family.samples:
            if sample.labels.get("model") != CHAT_MODEL:
                continue
            if sample.name.endswith("_sum"):
                total += sample.value
            elif sample.name.endswith("_count"):
                count += sample.value
        found[family.name] = (total, count)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="bursts of 16")
    parser.add_argument("--config", default=str(server.ROOT / "serve_config.yaml"))
    parser.add_argument("--burst", type=int, default=BURST, help="streams at once (1: where c=1 TTFT goes)")
    parser.add_argument("--label", default="", help="added to the output's file name (e.g. python-proxy)")
    args = parser.parse_args()

    burst = args.burst
    say(f"raw engine, in-process: {burst} at once")
    raw_burst = raw.chat_engine_runs([burst], args.rounds, say, steady=False)[burst]
    say("starting the server")
    running = server.start(Path(args.config), log_name="burst-ttft-server.log")
    try:
        asyncio.run(_bursts(running.base, running.headers, 1, burst))  # warm-up
        time.sleep(METRICS_SETTLE_S)
        before = _histograms(running.base, running.admin_headers)
        roles = with_engine_cores(processes())
        cpu_before = {pid: cpu_seconds(pid) for pid in roles}
        wall = time.monotonic()
        samples = asyncio.run(_bursts(running.base, running.headers, args.rounds, burst))
        wall = time.monotonic() - wall
        cpu_by_role: dict[str, float] = {}
        for pid, role in roles.items():
            cpu_by_role[role] = cpu_by_role.get(role, 0.0) + cpu_seconds(pid) - cpu_before[pid]
        time.sleep(METRICS_SETTLE_S)
        after = _histograms(running.base, running.admin_headers)
    finally:
        running.stop()

    def median_ms(key: str) -> float:
        return round(statistics.median(s[key] for s in samples) * 1e3, 1)

    means = {}
    for name in HISTOGRAMS:
        (s0, c0), (s1, c1) = before.get(name, (0.0, 0.0)), after.get(name, (0.0, 0.0))
        means[name] = round((s1 - s0) / (c1 - c0) * 1e3, 1) if c1 > c0 else None
    report = {
        "cpu": cpu_info().model, "date": str(datetime.date.today()), "burst": burst, "rounds": args.rounds,
        "haproxy": read_env().haproxy is not False,  # the launcher's default is on
        "raw_engine_ttft_p50_ms": round(raw_burst.ttft_p50_ms, 1),
        "client_median_ms": {"headers": median_ms("headers"), "role_chunk": median_ms("role"),
                             "first_content": median_ms("content"),
                             "role_to_content": round(statistics.median(s["content"] - s["role"] for s in samples) * 1e3, 1)},
        "server_mean_ms": means,
        # Cores each process used while the bursts ran (the client's pauses between bursts included).
        "cores_used": {role: round(seconds / wall, 3) for role, seconds in sorted(cpu_by_role.items(), key=lambda kv: -kv[1])},
    }
    print(f"\nCPU: {report['cpu']}; {args.rounds} bursts of {burst} streams\n")
    print("| step | ms |\n|---|---|")
    print(f"| raw engine TTFT p50, same burst (prompts tokenized beforehand) | {report['raw_engine_ttft_p50_ms']} |")
    print(f"| client: response headers, median | {report['client_median_ms']['headers']} |")
    print(f"| client: role chunk (way in + template + tokenization + way out), median | {report['client_median_ms']['role_chunk']} |")
    print(f"| client: first content (TTFT), median | {report['client_median_ms']['first_content']} |")
    print(f"| client: role chunk to first content, median | {report['client_median_ms']['role_to_content']} |")
    for name, what in HISTOGRAMS.items():
        print(f"| {what}, mean | {means[name]} |")
    print("\n| process | cores used during the bursts |\n|---|---|")
    for role, cores in report["cores_used"].items():
        print(f"| {role} | {cores} |")
    path = server.ROOT / "bench" / "results" / f"burst-ttft-{datetime.date.today()}{'' if burst == BURST else f'-c{burst}'}{'-' + args.label if args.label else ''}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    say(f"wrote {path}")


if __name__ == "__main__":
    main()
