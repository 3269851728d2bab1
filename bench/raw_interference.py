"""`python -m bench.raw_interference`: what other processes on the same cores cost the raw chat engine.

The raw engine (bench.raw: the server's OpenVINO engine class and core process, no Ray or HTTP on
its path) at c=16, in rounds that alternate:
- alone;
- beside a synthetic straggler, a process busy for 2 ms at a time for a given share of one core
  (what the server's ingress, replicas and Ray's background add up to under chat load);
- beside idle Ray actors: each Ray worker process wakes every 10 ms to check for signals (Ray's
  core worker, `CoreWorker.CheckSignal`), and a server runs a dozen of them;
- with one inference thread instead of OpenVINO's default (one per core), which a straggler
  cannot make wait on a preempted partner.

Prints tok/s and TTFT p50 per setting and writes bench/results/raw-interference-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import time

from hardware.detect import cpu_info

from . import raw
from .server import ROOT


def _straggle(share: float, stop) -> None:
    busy_s = 0.002
    idle_s = busy_s * (1 - share) / share
    while not stop.is_set():
        started = time.perf_counter()
        while time.perf_counter() - started < busy_s:
            pass
        time.sleep(idle_s)


def _measure(rounds: int, *, threads: int | None = None, straggler: float = 0.0) -> dict:
    stop = multiprocessing.Event()
    process = multiprocessing.Process(target=_straggle, args=(straggler, stop)) if straggler else None
    if process is not None:
        process.start()
    try:
        run = raw.chat_engine_runs([16], rounds, lambda *_: None, num_threads=threads)[16]
    finally:
        stop.set()
        if process is not None:
            process.join()
    return {"tokens_per_s": round(run.tokens_per_s, 1), "ttft_p50_ms": round(run.ttft_p50_ms, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="requests per client in each measurement")
    parser.add_argument("--idle-actors", type=int, default=12)
    args = parser.parse_args()
    import ray

    @ray.remote(num_cpus=0)
    class Idle:
        def pid(self) -> int:
            return os.getpid()

    settings = {
        "alone": {},
        "straggler 0.25 core": {"straggler": 0.25},
        "straggler 0.45 core": {"straggler": 0.45},
        "1 inference thread": {"threads": 1},
        "1 inference thread, straggler 0.45 core": {"threads": 1, "straggler": 0.45},
    }
    results: dict[str, list[dict]] = {}
    ray.init(include_dashboard=False, logging_level="WARNING")
    try:
        for _ in range(args.repeats):
            for name, setting in settings.items():
                results.setdefault(name, []).append(_measure(args.rounds, **setting))
                print(f"{name}: {results[name][-1]}", flush=True)
            actors = [Idle.remote() for _ in range(args.idle_actors)]
            ray.get([actor.pid.remote() for actor in actors])
            name = f"{args.idle_actors} idle Ray actors"
            results.setdefault(name, []).append(_measure(args.rounds))
            print(f"{name}: {results[name][-1]}", flush=True)
            for actor in actors:
                ray.kill(actor)
    finally:
        ray.shutdown()
    path = ROOT / "bench" / "results" / f"raw-interference-{datetime.date.today()}.json"
    path.write_text(json.dumps({"cpu": cpu_info().model, "date": str(datetime.date.today()), "results": results}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
