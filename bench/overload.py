"""`python -m bench.overload`: how soon throughput is back after a burst over the queue.
`hfserve serve` with the default config, its chat model limited to 4 requests at once and 8
queued (what tests/integration/test_faults.py gives its own model, so that a burst overflows).
Chat requests at concurrency 4 (nothing queues) for `--window-s`, then a burst of 4 x the queue
of longer ones all at once, then the same traffic again, second by second, twice as long.
"Normal" is the median per-second rate of the windows before and well after the burst; the
figure is the first second after the burst whose two-second mean is >= 0.8 x normal.

    flock /tmp/ray-tests.lock .venv/bin/python -m bench.overload

Writes bench/results/overload-<date>.json. Used for the burst row of docs/operations.md's fault
matrix; the test keeps only what must hold (fast refusals, nothing left behind).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from hardware.detect import cpu_info

from .server import ROOT, start
from .stats import unused
from .workload import CHAT_MODEL, chat_messages

MAX_ONGOING, MAX_QUEUED = 4, 8


def _config() -> Path:
    data = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    chat = next(app for app in data["applications"] if app["name"] == CHAT_MODEL)
    chat["deployments"] = [{"name": "ModelServer", "max_ongoing_requests": MAX_ONGOING,
                            "max_queued_requests": MAX_QUEUED}]
    out = Path(tempfile.mkdtemp(prefix="hfserve-overload-")) / "serve_config.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


async def _rate(http: httpx.AsyncClient, seconds: int) -> tuple[list[int], dict[str, int]]:
    """Completed requests in each second at concurrency 4, and every status seen."""
    done: list[float] = []
    statuses: dict[str, int] = {}
    start = time.monotonic()

    async def loop(worker: int) -> None:
        i = worker
        while time.monotonic() - start < seconds:
            response = await http.post("/v1/chat/completions", json={
                "model": CHAT_MODEL, "messages": chat_messages(i), "max_tokens": 16, "temperature": 1})
            statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1
            if response.status_code == 200:
                done.append(time.monotonic() - start)
            i += 4

    await asyncio.gather(*(loop(w) for w in range(4)))
    return [sum(1 for t in done if s <= t < s + 1) for s in range(seconds)], statuses


async def _measure(base: str, headers: dict, window_s: int) -> dict:
    burst = 4 * MAX_QUEUED
    limits = httpx.Limits(max_connections=burst + 8, keepalive_expiry=5)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=120, limits=limits) as http:
        await _rate(http, 3)  # warm-up
        before, _ = await _rate(http, window_s)
        started = time.monotonic()

        async def one(i: int) -> int:
            response = await http.post("/v1/chat/completions", json={
                "model": CHAT_MODEL, "messages": chat_messages(i), "max_tokens": 200, "temperature": 1})
            return response.status_code

        codes = await asyncio.gather(*(one(i) for i in range(burst)))
        burst_s = time.monotonic() - started
        after, after_statuses = await _rate(http, 2 * window_s)
        later, _ = await _rate(http, window_s)
    normal = statistics.median(before + later)
    smoothed = [(a + b) / 2 for a, b in zip(after, after[1:], strict=False)]
    back = next((second for second, mean in enumerate(smoothed) if mean >= 0.8 * normal), None)
    return {"burst": burst, "burst_statuses": {str(c): codes.count(c) for c in sorted(set(codes))},
            "burst_answered_s": round(burst_s, 2), "normal_req_s": normal, "before": before, "after": after,
            "later": later, "after_statuses": after_statuses, "back_to_0_8_normal_at_s": back}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window-s", type=int, default=8, help="seconds of traffic before the burst (after: twice)")
    parser.add_argument("--rounds", type=int, default=3, help="bursts, one after another on the same server")
    args = parser.parse_args()
    server = start(_config(), log_name="overload-server.log")
    try:
        runs = [asyncio.run(_measure(server.base, server.headers, args.window_s)) for _ in range(args.rounds)]
    finally:
        server.stop()
    print(f"\nCPU: {cpu_info().model}\n\n| round | burst 200/503/429 | normal req/s | back to 0.8x at, s |\n|---|---|---|---|")
    for number, run in enumerate(runs, 1):
        codes = run["burst_statuses"]
        print(f"| {number} | {codes.get('200', 0)}/{codes.get('503', 0)}/{codes.get('429', 0)} "
              f"| {run['normal_req_s']} | {run['back_to_0_8_normal_at_s']} |")
    out = unused(ROOT / "bench" / "results" / f"overload-{datetime.date.today().isoformat()}.json")
    out.write_text(json.dumps({"cpu": cpu_info().model, "cpus": os.cpu_count(), "max_ongoing_requests": MAX_ONGOING,
                               "max_queued_requests": MAX_QUEUED, "runs": runs}, indent=2))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
