"""`python -m bench.fairness`: a small embedding request alone, and sent while a large one runs,
on the packaged MiniLM encoder on OpenVINO in-process, as the server's embedding task builds it
(SlotBatcher over the engine's streams, the server's batch size).

Two orders of the large request's batches, alternating rounds: `fifo`, its chunks queued at once
ahead of anything sent later (what hfserve did before issue 27), and `fair`, the request taking
turns with other callers (deployments/slot_batching.py). A small request (1 input) is sent every
0.25 s for as long as the large one runs, each timed on its own. Two large requests: 2048 short sentences (the
most inputs) and 256 inputs of 256 tokens (the max_request_tokens default, 64k tokens).

Prints a table and writes bench/results/fairness-<date>.json (-2, -3 for a day's later runs).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import time
from types import SimpleNamespace

from contract.config import ModelAppArgs
from contract.embedding_protocol import EmbeddingRequest
from deployments.tasks import embedding
from hardware.detect import cpu_info

from .raw import embedding_model
from .server import ROOT
from .stats import percentile, unused
from .workload import EMBED_SOURCE, sentences

OPENVINO = SimpleNamespace(backend="openvino", device="cpu")


def large_requests(tokenizer) -> dict[str, list[list[int]]]:
    """name -> the large request's token ids (tokenized once, outside the timings)."""
    short = [tokenizer(text)["input_ids"] for text in sentences(2048)]
    words = " ".join(sentences(64)).split()
    long = [tokenizer(" ".join(words[i : i + 400]), truncation=True, max_length=256)["input_ids"] for i in range(256)]
    return {"2048 x short": short, "256 x 256 tokens": long}


async def small_request(task, n: int) -> float:
    started = time.perf_counter()
    await task.embed(EmbeddingRequest(model="bench", input=f"a small request {n}"))
    return time.perf_counter() - started


async def one_run(task, ids: list[list[int]], order: str, every_s: float) -> dict:
    """The large request in `order`, and a small one sent every `every_s` while it runs (each
    on its own: a small one waiting does not hold the next back): its time and theirs."""
    batcher, size = task._batcher, task.max_batch_size
    started = time.perf_counter()
    if order == "fair":
        large = asyncio.ensure_future(batcher.run(ids))
    else:  # each chunk its own caller, queued at once: the FIFO order of before
        large = asyncio.ensure_future(asyncio.gather(*(batcher.run(ids[i : i + size]) for i in range(0, len(ids), size))))
    small = []
    while not large.done():
        await asyncio.wait({large}, timeout=every_s)
        if not large.done():
            small.append(asyncio.ensure_future(small_request(task, len(small))))
    took = time.perf_counter() - started
    return {"large_s": took, "small_s": list(await asyncio.gather(*small))}


def summary(values: list[float]) -> dict:
    return {"n": len(values), "p50_ms": round(percentile(values, 0.5) * 1e3, 1),
            "p90_ms": round(percentile(values, 0.9) * 1e3, 1), "max_ms": round(max(values) * 1e3, 1)}


async def measure(rounds: int, every_s: float, say) -> dict:
    prepared, tokenizer = embedding_model(say)
    args = ModelAppArgs(source=EMBED_SOURCE, task="embedding")
    task = embedding.load("bench", args, prepared, OPENVINO)
    larges = large_requests(tokenizer)
    for ids in larges.values():  # warm-up at every batch shape
        await task._batcher.run(ids[: task.max_batch_size * 2])
    alone = [await small_request(task, n) for n in range(50)]
    batch_s = {}
    for name, ids in larges.items():
        full = ids[: task.max_batch_size]
        times = []
        for _ in range(5):
            started = time.perf_counter()
            await asyncio.to_thread(task.engine.encode, full)
            times.append(time.perf_counter() - started)
        batch_s[name] = percentile(times, 0.5)
    runs: dict = {name: {"fifo": [], "fair": []} for name in larges}
    for r in range(rounds):
        for name, ids in larges.items():
            for order in ("fifo", "fair") if r % 2 == 0 else ("fair", "fifo"):
                run = await one_run(task, ids, order, every_s)
                runs[name][order].append(run)
                say(f"round {r + 1} {name} {order}: large {run['large_s']:.2f}s, {len(run['small_s'])} small, "
                    f"p50 {percentile(run['small_s'], 0.5) * 1e3:.0f} ms, max {max(run['small_s']) * 1e3:.0f} ms")
    return {
        "cpu": cpu_info().model, "date": str(datetime.date.today()), "model": EMBED_SOURCE,
        "engine": task.engine.name, "batches_at_once": task.engine.concurrency, "max_batch_size": task.max_batch_size,
        "rounds": rounds, "small_every_s": every_s, "small_alone": summary(alone),
        "large": {name: {"inputs": len(ids), "tokens": sum(map(len, ids)),
                         "one_full_batch_ms": round(batch_s[name] * 1e3, 1),
                         **{order: {"large_s": [round(run["large_s"], 2) for run in by_order[order]],
                                    "small": summary([s for run in by_order[order] for s in run["small_s"]])}
                            for order in ("fifo", "fair")}}
                  for name, ids in larges.items() for by_order in [runs[name]]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--every", type=float, default=0.25, help="seconds between small requests")
    args = parser.parse_args()
    report = asyncio.run(measure(args.rounds, args.every, print))
    alone = report["small_alone"]
    print(f"\nCPU: {report['cpu']}; {report['batches_at_once']} batch(es) at once of up to {report['max_batch_size']}; "
          f"a small request alone: p50 {alone['p50_ms']} ms, max {alone['max_ms']} ms\n")
    print("| large request | tokens | one full batch | order | large took (s) | small beside it: p50 / p90 / max ms |")
    print("|---|---|---|---|---|---|")
    for name, large in report["large"].items():
        for order in ("fifo", "fair"):
            small = large[order]["small"]
            took = "/".join(f"{s:.1f}" for s in large[order]["large_s"])
            print(f"| {name} | {large['tokens']} | {large['one_full_batch_ms']} ms | {order} | {took} | "
                  f"{small['p50_ms']} / {small['p90_ms']} / {small['max_ms']} (n={small['n']}) |")
    path = unused(ROOT / "bench" / "results" / f"fairness-{report['date']}.json")
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
