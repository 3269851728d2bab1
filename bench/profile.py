"""`python -m bench.profile`: where a request's CPU goes, process by process.

Starts `hfserve serve` (the default config), drives single-input embeddings (c=32 x 1 by
default, the workload where Ray Serve's per-request cost shows most) or, with `--workload chat`,
streamed chats (c=16, the bench's prompts and 64 tokens), and meanwhile:
- reads each process's CPU time from /proc before and after: CPU ms per request, per process,
  and the cores each used (the chat engine's core process included, and what no process of the
  server's accounts for, from /proc/stat);
- samples the proxy, the ingress replicas and the model's replica with `py-spy record`
  (non-blocking, so the sampled processes are not paused), and sorts each sample by the
  library its innermost Python frame belongs to.

Prints a table (docs/performance.md has the one measured last) and writes
bench/results/profile-<date>.json plus py-spy's raw stacks next to it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from hardware.detect import cpu_info

from . import http_load, server
from .workload import CHAT_MODEL, EMBED_MODEL

ROLES = {  # process title pattern -> role
    r"ray::ProxyActor": "proxy",
    r"^\S*haproxy\b": "HAProxy",  # HAProxy mode (the default): HTTP goes through it instead of the proxy
    r"ray::ServeReplica:ingress:Ingress": "ingress",
    r"ray::ServeReplica:all-minilm-l6-v2:": "embedding replica",
    r"ray::ServeReplica:smollm2-135m-instruct:": "chat replica",
    r"ray::ServeController": "Serve controller",
    r"gcs_server": "GCS",
    r"raylet": "raylet",
}
# Sorted by the innermost Python frame: the first pattern that matches names the sample. The
# first ones are event loops and threads whose own work is native (uvloop, Ray's Cython core
# worker): a sample there is the loop's machinery (scheduling callbacks, epoll, handing work
# between threads), not Python code.
CATEGORIES = [
    ("event loop: Serve router's thread (native)", r"_run_router_event_loop"),
    ("event loop: replica's user-code thread (native)", r"_run_user_code_event_loop"),
    ("event loop: actor's async thread (native)", r"^Thread\.run \(threading"),
    ("Ray core worker main loop (native)", r"^Worker\.main_loop"),
    ("inference (OpenVINO)", r"openvino|engines/encoders\.py"),
    ("tokenizer", r"tokenizers|tokenization_utils"),
    ("pydantic", r"pydantic"),
    ("hfserve code", r"/(serve_app|contract|deployments|observability)/"),
    ("Ray: serialization", r"serialization\.py|cloudpickle|msgpack|pickle"),
    ("Ray Serve: handle and router", r"serve/(handle\.py|_private/(router|request_router|replica_scheduler|handle_options|replica_result))"),
    ("Ray Serve: replica", r"serve/_private/(replica|replica_result|local_testing_mode)\.py|serve/batching\.py"),
    ("Ray Serve: proxy", r"serve/_private/(proxy|proxy_request_response_protocol|proxy_response_generator|proxy_router|http_util)"),
    ("Ray Serve: other", r"ray/serve/"),
    ("Ray core (worker, _raylet, object refs)", r"ray/_private/|ray/_raylet|_raylet\.pyx|ray/actor\.py|ray/remote_function"),
    ("metrics and tracing", r"ray/util/metrics|prometheus_client|opentelemetry|ray/util/tracing"),
    ("HTTP server (uvicorn, h11, httptools)", r"uvicorn|h11|httptools|websockets"),
    ("ASGI framework (Starlette, FastAPI)", r"starlette|fastapi"),
    ("JSON", r"/json/|orjson"),
    ("logging", r"/logging/|ray/_private/ray_logging|serve/_private/logging_utils"),
    ("asyncio event loop", r"/asyncio/|uvloop"),
    ("threads and queues", r"threading\.py|queue\.py|concurrent/futures"),
    ("gRPC", r"grpc"),
]


METRICS_SETTLE_S = 25  # Ray's metrics agents report every 10 s and /metrics gathers them every 10 s


def say(message: str) -> None:
    print(f"[profile] {message}", flush=True)


def processes() -> dict[int, str]:
    """pid -> role, for the processes of the roles above."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        for pattern, role in ROLES.items():
            if re.search(pattern, args):
                found[int(pid)] = role
                break
    return found


def with_engine_cores(roles: dict[int, str]) -> dict[int, str]:
    """roles plus the chat replica's children: the OpenVINO engine-core process."""
    import psutil

    found = dict(roles)
    for pid, role in roles.items():
        if role == "chat replica":
            for child in psutil.Process(pid).children(recursive=True):
                found[child.pid] = "chat engine core"
    return found


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (every core, from /proc/stat)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def category(frame: str) -> str:
    for name, pattern in CATEGORIES:
        if re.search(pattern, frame):
            return name
    return "other (stdlib, C extensions)"


def read_stacks(path: Path) -> tuple[Counter, Counter]:
    """py-spy's raw format, one `frame;frame;...;leaf count` per line -> samples by the
    leaf's category, and by the leaf function itself."""
    by_category: Counter = Counter()
    by_function: Counter = Counter()
    if not path.exists():
        return by_category, by_function
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        by_category[category(leaf)] += int(count)
        by_function[leaf] += int(count)
    return by_category, by_function


def with_app_args(config: Path, overrides: dict[str, list[str]]) -> Path:
    """The config with some applications' args replaced: {app name: ["NAME=YAML value", ...]}."""
    if not any(overrides.values()):
        return config
    import tempfile

    import yaml

    data = yaml.safe_load(config.read_text())
    for app_name, items in overrides.items():
        app = next(app for app in data["applications"] if app["name"] == app_name)
        for item in items:
            key, _, value = item.partition("=")
            app.setdefault("args", {})[key] = yaml.safe_load(value)
    out = Path(tempfile.mkdtemp(prefix="hfserve-profile-config-")) / "serve_config.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


HISTOGRAMS = {  # what bench.profile reads from /metrics for the embedding model, before and after the run
    "batches": ("hf_server_batch_size", {"kind": "serve_batch"}),  # engine calls and their sizes
    "ingress_duration_s": ("hf_server_request_duration_seconds", {}),  # the ingress's own view of each request
    "queue_s": ("hf_server_request_queue_seconds", {}),  # ingress call -> the replica starts it
}


def histograms(base: str, headers: dict[str, str]) -> dict[str, tuple[float, float, dict[float, float]]]:
    """For each of HISTOGRAMS, the embedding model's (sum, count, cumulative count by bucket's
    upper bound) so far, from /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    by_family = {family: (key, labels) for key, (family, labels) in HISTOGRAMS.items()}
    found: dict[str, tuple[float, float, dict[float, float]]] = {key: (0.0, 0.0, {}) for key in HISTOGRAMS}
    for family in text_string_to_metric_families(httpx.get(f"{base}/metrics", headers=headers, timeout=30).text):
        if family.name not in by_family:
            continue
        key, labels = by_family[family.name]
        total, count, buckets = found[key]
        for sample in family.samples:
            if sample.labels.get("model") != EMBED_MODEL or any(sample.labels.get(k) != v for k, v in labels.items()):
                continue
            if sample.name.endswith("_sum"):
                total += sample.value
            elif sample.name.endswith("_count"):
                count += sample.value
            elif sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
        found[key] = (total, count, buckets)
    return found


def histogram_report(before: tuple, after: tuple) -> dict:
    """Observations during the run: how many, their mean, and the share in each bucket."""
    (s0, c0, b0), (s1, c1, b1) = before, after
    observed = c1 - c0
    if observed <= 0:
        return {"count": 0}
    shares, below = {}, 0.0
    for bound in sorted(b1):
        cumulative = b1[bound] - b0.get(bound, 0.0)
        if cumulative > below:
            shares[f"<= {bound:g}"] = round((cumulative - below) / observed, 3)
        below = cumulative
    return {"count": int(observed), "mean": round((s1 - s0) / observed, 4), "shares": shares}


def print_tail(timeline: list[tuple[float, float]], p50_s: float) -> None:
    """When the requests slower than 3 x p50 were sent, by second of the run: spread out
    (unfair queueing) or bunched (a stall)."""
    if not timeline:
        return
    start = min(sent for sent, _ in timeline)
    slow: Counter = Counter(int(sent - start) for sent, seconds in timeline if seconds > 3 * p50_s)
    total: Counter = Counter(int(sent - start) for sent, _ in timeline)
    say(f"requests slower than 3 x p50 ({3 * p50_s * 1e3:.0f} ms), by the second they were sent: "
        + " ".join(f"{second}s:{slow[second]}/{total[second]}" for second in sorted(total) if slow[second]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(server.ROOT / "serve_config.yaml"))
    parser.add_argument("--workload", choices=("embeddings", "chat"), default="embeddings")
    parser.add_argument("--concurrency", type=int, default=None, help="clients (default 32 for embeddings, 16 for chat)")
    parser.add_argument("--inputs", type=int, default=1, help="inputs per request (embeddings)")
    parser.add_argument("--seconds", type=float, default=30, help="how long to measure (chat: about)")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second (0: no sampling, CPU accounting only)")
    parser.add_argument("--ingress-arg", action="append", default=[], metavar="NAME=YAML",
                        help="override an ingress arg, e.g. enable_caching=false")
    parser.add_argument("--model-arg", action="append", default=[], metavar="NAME=YAML",
                        help="override an arg of the measured model's application, e.g. batch_wait_timeout_s=0")
    parser.add_argument("--label", default="", help="added to the output's file names")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    name = f"profile-{datetime.date.today()}{'-chat' if args.workload == 'chat' else ''}{'-' + args.label if args.label else ''}"
    out_dir = server.ROOT / "bench" / "results" / name
    if args.rate:
        out_dir.mkdir(parents=True, exist_ok=True)

    chat = args.workload == "chat"
    args.concurrency = args.concurrency or (16 if chat else 32)
    replica = "chat replica" if chat else "embedding replica"
    say("starting the server")
    config = with_app_args(Path(args.config), {"ingress": args.ingress_arg, (CHAT_MODEL if chat else EMBED_MODEL): args.model_arg})
    running = server.start(config, log_name="profile-server.log")
    try:
        say("warm-up")
        if chat:
            started = time.monotonic()
            asyncio.run(http_load.chat_run(running.base, args.concurrency, 2, headers=running.headers))
            # Rounds of c requests that take about --seconds, from the warm-up's pace.
            rounds = max(2, round(args.seconds / ((time.monotonic() - started) / 3)))
        else:
            asyncio.run(http_load.embedding_run(running.base, args.concurrency, args.inputs, 10, headers=running.headers))
        if not chat:  # the embedding model's batches and queue, from /metrics
            time.sleep(METRICS_SETTLE_S)
            histograms_before = histograms(running.base, running.admin_headers)
        roles = with_engine_cores(processes())
        say("sampling " + ", ".join(f"{role} {pid}" for pid, role in sorted(roles.items(), key=lambda kv: kv[1])))
        sampled = {pid: role for pid, role in roles.items() if role in ("proxy", "ingress", replica)}
        spies = [
            subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(int(args.seconds)), "--rate", str(args.rate),
                              "--nonblocking", "--format", "raw", "--output", str(out_dir / f"{role.replace(' ', '-')}-{pid}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for pid, role in sampled.items() if args.rate
        ]
        before = {pid: cpu_seconds(pid) for pid in roles}
        busy_before, client_before, started = machine_busy_seconds(), sum(os.times()[:2]), time.monotonic()
        timeline: list[tuple[float, float]] = []
        if chat:
            chat_run = asyncio.run(http_load.chat_run(running.base, args.concurrency, rounds, headers=running.headers))
        else:
            run = asyncio.run(http_load.embedding_run(running.base, args.concurrency, args.inputs, args.seconds,
                                                      headers=running.headers, timeline=timeline))
        elapsed = time.monotonic() - started
        after = {pid: cpu_seconds(pid) for pid in roles}
        busy, client = machine_busy_seconds() - busy_before, sum(os.times()[:2]) - client_before
        for process in spies:
            process.wait(timeout=120)
        if not chat:
            time.sleep(METRICS_SETTLE_S)
            histograms_after = histograms(running.base, running.admin_headers)
            seen = {key: histogram_report(histograms_before[key], histograms_after[key]) for key in HISTOGRAMS}
    finally:
        running.stop()

    report: dict = {
        "cpu": cpu_info().model, "date": str(datetime.date.today()), "workload": args.workload,
        "concurrency": args.concurrency, "wall_s": round(elapsed, 1), "processes": {},
    }
    if chat:
        requests = chat_run.requests
        report.update(requests=requests, tokens_per_s=round(chat_run.tokens_per_s, 1), ttft_p50_ms=round(chat_run.ttft_p50_ms, 1))
        say(f"{requests} chats, {chat_run.tokens_per_s:.1f} tok/s, TTFT p50 {chat_run.ttft_p50_ms:.0f} ms")
    else:
        requests = run.requests
        print_tail(timeline, run.latency_p50_ms / 1e3)
        report.update(inputs_per_request=args.inputs, requests=requests, requests_per_s=round(run.requests_per_s, 1),
                      latency_p50_ms=round(run.latency_p50_ms, 1), latency_p99_ms=round(run.latency_p99_ms, 1))
        say(f"{requests} requests, {run.requests_per_s:.1f} req/s, p50 {run.latency_p50_ms:.0f} ms, p99 {run.latency_p99_ms:.0f} ms")
    cpu_by_role: Counter = Counter()
    for pid, role in roles.items():
        cpu_by_role[role] += after[pid] - before[pid]
    cpu_by_role["load generator (this process)"] = client
    # Ray's other processes (dashboard, log monitor, hfserve's own actors), the kernel's network work.
    cpu_by_role["not in the roles above"] = max(0.0, busy - sum(cpu_by_role.values()))
    if not chat:
        for key, summary in seen.items():
            say(f"{key}: {summary}")
    print("\n| process | CPU ms per request | cores |\n|---|---|---|")
    for role, seconds in cpu_by_role.most_common():
        print(f"| {role} | {seconds / requests * 1e3:.2f} | {seconds / elapsed:.3f} |")
    for role in ("proxy", "ingress", replica) if args.rate else ():  # py-spy's samples, when it ran
        categories: Counter = Counter()
        functions: Counter = Counter()
        for pid, r in sampled.items():
            if r == role:
                c, f = read_stacks(out_dir / f"{role.replace(' ', '-')}-{pid}.txt")
                categories.update(c)
                functions.update(f)
        total = sum(categories.values()) or 1
        per_request_ms = cpu_by_role[role] / requests * 1e3
        print(f"\n{role}: {per_request_ms:.2f} CPU ms per request, {total} samples\n| where | share | ms per request |\n|---|---|---|")
        for where, count in categories.most_common():
            print(f"| {where} | {count / total:.0%} | {count / total * per_request_ms:.2f} |")
        print("top functions (self): " + "; ".join(f"{fn} {n / total:.1%}" for fn, n in functions.most_common(12)))
        report["processes"][role] = {
            "cpu_ms_per_request": round(per_request_ms, 2),
            "categories": {where: round(count / total, 3) for where, count in categories.most_common()},
            "top_functions": {fn: round(n / total, 3) for fn, n in functions.most_common(25)},
        }
    report["cpu_ms_per_request"] = {role: round(s / requests * 1e3, 2) for role, s in cpu_by_role.items()}
    report["cores"] = {role: round(s / elapsed, 3) for role, s in cpu_by_role.items()}
    report["ingress_args"] = args.ingress_arg
    report["model_args"] = args.model_arg
    if not chat:
        report["histograms"] = seen
    path = server.ROOT / "bench" / "results" / f"{name}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    say(f"wrote {path} and the raw stacks in {out_dir}")


if __name__ == "__main__":
    main()
