"""`make soak`: ten minutes of mixed traffic against `hfserve serve` with the default config,
then a report: the RSS of every process of the server, p50 and p99 latency at the start and
at the end, and errors. Not part of `make test`.

The mix: chat (whole and streamed), embeddings, cache hits, bad input that must be a 4xx,
and key creation and revocation. An unexpected error is any 5xx, and any status other than
the one each kind expects (bad input: its 4xx; everything else: 200/201).

Targets: RSS growth <= 10% after warm-up, 0 unexpected errors, p99 drift <= 20%.

Warm-up ends when the total RSS levels off (it grew less than 1% over the next 60 s), and at
least a third of the run must remain after it. The OpenVINO engine's KV cache is why: its
pages become resident as its blocks are first written (prefix caching keeps them), so the
engine grows by up to `kv_cache_gb` during the first minutes and then stays flat. A leak never
levels off and fails the target.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil

from hardware.detect import cpu_info

from . import server
from .stats import percentile
from .workload import CHAT_MODEL, EMBED_MODEL, chat_messages, sentences

ROOT = server.ROOT
NO_CACHE = {"Cache-Control": "no-cache"}


def say(message: str) -> None:
    print(f"[soak] {message}", flush=True)


class Traffic:
    """One request of each kind; each returns (kind, status, expected?)."""

    def __init__(self, http: httpx.AsyncClient, user: dict[str, str], admin: dict[str, str]):
        self.http, self.user, self.admin = http, user, admin
        self.counter = 0

    async def chat(self) -> tuple[str, int, bool]:
        self.counter += 1
        body = {"model": CHAT_MODEL, "messages": chat_messages(self.counter), "max_tokens": 16, "temperature": 0.7}
        response = await self.http.post("/v1/chat/completions", json=body, headers={**self.user, **NO_CACHE})
        return "chat", response.status_code, response.status_code == 200

    async def stream(self) -> tuple[str, int, bool]:
        self.counter += 1
        body = {"model": CHAT_MODEL, "messages": chat_messages(self.counter), "max_tokens": 16, "stream": True,
                "stream_options": {"include_usage": True}}
        async with self.http.stream("POST", "/v1/chat/completions", json=body, headers={**self.user, **NO_CACHE}) as response:
            text = b"".join([chunk async for chunk in response.aiter_bytes()])
        return "stream", response.status_code, response.status_code == 200 and text.endswith(b"data: [DONE]\n\n") and b'"error"' not in text

    async def embed(self) -> tuple[str, int, bool]:
        self.counter += 1
        body = {"model": EMBED_MODEL, "input": sentences(4, offset=self.counter * 4)}
        response = await self.http.post("/v1/embeddings", json=body, headers=self.user)
        return "embed", response.status_code, response.status_code == 200

    async def cache_hit(self) -> tuple[str, int, bool]:
        body = {"model": CHAT_MODEL, "messages": chat_messages(random.randrange(4)), "max_tokens": 16, "temperature": 0}
        response = await self.http.post("/v1/chat/completions", json=body, headers=self.user)
        return "cache", response.status_code, response.status_code == 200

    async def bad_input(self) -> tuple[str, int, bool]:
        bodies = [
            ("/v1/chat/completions", b'{"model": "%s", "messages": []}' % CHAT_MODEL.encode(), 400),
            ("/v1/chat/completions", b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}', 404),
            ("/v1/embeddings", b'{"model": "%s", "input": ""}' % EMBED_MODEL.encode(), 400),
            ("/v1/chat/completions", b'{"model": "%s", "messages": [{"role": "user", "content": "\\ud800"}], "max_tokens": 4}'
             % CHAT_MODEL.encode(), 200),
            ("/v1/completions", b"{not json", 400),
        ]
        path, raw, expected = random.choice(bodies)
        response = await self.http.post(path, content=raw, headers={**self.user, "Content-Type": "application/json"})
        return "bad", response.status_code, response.status_code == expected

    async def keys(self) -> tuple[str, int, bool]:
        created = await self.http.post("/admin/keys", json={"name": f"soak-{self.counter}"}, headers=self.admin)
        if created.status_code != 201:
            return "keys", created.status_code, False
        revoked = await self.http.delete(f"/admin/keys/{created.json()['id']}", headers=self.admin)
        return "keys", revoked.status_code, revoked.status_code == 200

    def pick(self):
        kinds = [(self.chat, 25), (self.stream, 15), (self.embed, 25), (self.cache_hit, 15), (self.bad_input, 15), (self.keys, 5)]
        return random.choices([k for k, _ in kinds], weights=[w for _, w in kinds])[0]


def rss_by_process(root_pid: int) -> dict[int, tuple[str, int]]:
    """(command line, RSS in bytes) of every process of the server's session, by pid (Ray
    renames its workers' process titles as they work, so the pid is the stable key)."""
    out: dict[int, tuple[str, int]] = {}
    for process in psutil.process_iter(["pid", "cmdline", "memory_info"]):
        try:
            if os.getsid(process.pid) != root_pid:  # server.start gives it a session of its own
                continue
            name = " ".join(process.info["cmdline"] or [])[:80] or str(process.pid)
            out[process.pid] = (name, process.info["memory_info"].rss)
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return out


def total_mib(rss: dict[int, tuple[str, int]]) -> float:
    return sum(size for _, size in rss.values()) / 2**20


def warm_end(timeline: list[tuple[float, dict]], duration: float) -> int | None:
    """The first sample after which the total RSS grew less than 1% over 60 s, if a third of
    the run is left after it."""
    for i, (t, rss) in enumerate(timeline):
        later = next((other for u, other in timeline[i:] if u >= t + 60), None)
        if later is None or t > duration * 2 / 3:
            return None
        if total_mib(later) < total_mib(rss) * 1.01:
            return i
    return None


async def run(base: str, user: dict, admin: dict, seconds: float, concurrency: int, records: list) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=httpx.Limits(max_connections=concurrency + 4)) as http:
        traffic = Traffic(http, user, admin)
        start = time.monotonic()

        async def worker() -> None:
            while time.monotonic() - start < seconds:
                began = time.monotonic()
                try:
                    kind, status, ok = await traffic.pick()()
                except httpx.HTTPError as exc:
                    kind, status, ok = "transport", 0, False
                    say(f"transport error: {exc!r}")
                records.append((began - start, kind, status, ok, time.monotonic() - began))

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def window(records: list, start: float, end: float) -> dict:
    latencies = [r[4] for r in records if start <= r[0] < end and r[3]]
    return {"requests": len(latencies), "p50_ms": round(percentile(latencies, 0.5) * 1e3, 1),
            "p99_ms": round(percentile(latencies, 0.99) * 1e3, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=60.0,
                        help="where the latency windows start if the RSS never levels off")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--config", default=str(ROOT / "serve_config.yaml"))
    args = parser.parse_args()
    say("starting the server (hfserve serve, the default config)")
    running = server.start(Path(args.config), log_name="soak-server.log")
    records: list = []
    seconds = args.minutes * 60
    try:
        async def drive():
            task = asyncio.create_task(run(running.base, running.headers, running.admin_headers, seconds, args.concurrency, records))
            started = time.monotonic()
            while time.monotonic() - started < seconds - 1:  # the RSS every 30 s, to see it level off
                await asyncio.sleep(min(30.0, seconds - (time.monotonic() - started)))
                timeline.append((time.monotonic() - started, rss_by_process(running.process.pid)))
                say(f"t={timeline[-1][0]:.0f}s: {len(records)} requests; RSS {total_mib(timeline[-1][1]):.0f} MiB")
            await task
            timeline.append((time.monotonic() - started, rss_by_process(running.process.pid)))

        timeline: list[tuple[float, dict]] = []
        asyncio.run(drive())
    finally:
        running.stop()
    unexpected = [r for r in records if not r[3]]
    warm = warm_end(timeline, seconds)
    warm_at = timeline[warm][0] if warm is not None else args.warmup
    first = window(records, warm_at, warm_at + 60)
    last = window(records, seconds - 60, seconds)
    rss_start, rss_end = (timeline[warm][1] if warm is not None else timeline[0][1]), timeline[-1][1]
    total_start, total_end = total_mib(rss_start), total_mib(rss_end)
    per_process = {f"{name} [{pid}]": {"start_mib": round(size / 2**20, 1),
                                       "end_mib": round(rss_end.get(pid, ("", 0))[1] / 2**20, 1)}
                   for pid, (name, size) in rss_start.items()}
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu": cpu_info().model, "minutes": args.minutes, "concurrency": args.concurrency,
        "requests": len(records), "by_kind": dict(Counter(r[1] for r in records)),
        "statuses": {f"{kind} {status}": n for (kind, status), n in Counter((r[1], r[2]) for r in records).items()},
        "unexpected": [{"t": round(r[0], 1), "kind": r[1], "status": r[2]} for r in unexpected][:50],
        "latency_start": first, "latency_end": last,
        "p99_drift": round(last["p99_ms"] / first["p99_ms"] - 1, 3) if first["p99_ms"] else None,
        "warm_after_s": round(warm_at) if warm is not None else None,
        "rss_total_mib": {"start": round(total_start, 1), "end": round(total_end, 1)},
        "rss_growth": round(total_end / total_start - 1, 3),
        "rss_total_timeline_mib": [(round(t), round(total_mib(rss), 1)) for t, rss in timeline],
        "rss_by_process": per_process,
    }
    out = ROOT / "bench" / "results" / f"soak-{datetime.date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "rss_by_process"}, indent=2))
    print("\n| process | RSS start MiB | RSS end MiB |\n|---|---|---|")
    for name, rss in sorted(per_process.items(), key=lambda item: -item[1]["end_mib"]):
        print(f"| {name} | {rss['start_mib']} | {rss['end_mib']} |")
    met = {
        "RSS levels off (warm-up ends)": warm is not None,
        "rss_growth <= 10%": report["rss_growth"] <= 0.10,
        "0 unexpected errors": not unexpected,
        "p99 drift <= 20%": report["p99_drift"] is not None and report["p99_drift"] <= 0.20,
    }
    for name, ok in met.items():
        print(f"{'PASS' if ok else 'MISS'} {name}")
    print(f"written: {out}")
    return 0 if all(met.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
