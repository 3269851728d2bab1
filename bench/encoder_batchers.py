"""The transformers (torch) encoder behind the SlotBatcher the embedding, rerank and classify
tasks use, against Ray Serve's @serve.batch with `batch_size_fn` counting inputs and one or two
batches at once (`max_concurrent_batches`), in one process with the packaged all-MiniLM-L6-v2 on
CPU: inputs/s for single-input requests at c=32 and 32-input requests at c=4, and the latency of a
one-input request sent while a 512-input one runs.

    .venv/bin/python -m bench.encoder_batchers [--seconds 10] [--out FILE]

Results go to bench/results/encoder-batchers-<date>.json (or -2, -3, ... if taken).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from contract import tasks
from contract.config import ModelAppArgs
from deployments.engines.encoders import PoolingSpec, TorchEncoder
from deployments.slot_batching import SlotBatcher
from deployments.sources import prepare_model
from hardware.detect import cpu_info

from .outside_replica import allow_serve_batch
from .stats import percentile, unused
from .workload import EMBED_SOURCE, sentences

ROOT = Path(__file__).resolve().parent.parent
MAX_BATCH, WAIT_S = 32, 0.005  # the tasks' defaults (max_batch_size, batch_wait_timeout_s)


def _serve_batch(encode, concurrent: int):
    """An embed(list of inputs) over @serve.batch: each call is one request (in chunks of at most
    max_batch_size inputs), batches are counted in inputs, and a formed batch runs in a thread as
    the SlotBatcher's do."""
    from ray import serve

    class Batched:
        @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=WAIT_S, max_concurrent_batches=concurrent,
                     batch_size_fn=lambda requests: sum(len(r) for r in requests))
        async def run(self, requests: list[list[list[int]]]) -> list[np.ndarray]:
            rows = await asyncio.to_thread(encode, [ids for request in requests for ids in request])
            out, start = [], 0
            for request in requests:
                out.append(rows[start:start + len(request)])
                start += len(request)
            return out

    batched = Batched().run

    async def run(inputs: list[list[int]]) -> np.ndarray:
        # A call counted above max_batch_size is refused, so a large request goes in chunks.
        chunks = [inputs[i:i + MAX_BATCH] for i in range(0, len(inputs), MAX_BATCH)]
        return np.concatenate(await asyncio.gather(*(batched(chunk) for chunk in chunks)))

    return run


async def _measure(run, inputs: list[list[int]], seconds: float) -> dict:
    async def load(clients: int, per_request: int) -> dict:
        done, latencies = 0, []
        deadline = time.perf_counter() + seconds

        async def client(index: int) -> None:
            nonlocal done
            batch = [inputs[(index * per_request + k) % len(inputs)] for k in range(per_request)]
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                await run(batch)
                latencies.append(time.perf_counter() - started)
                done += per_request

        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        elapsed = time.perf_counter() - started
        return {"inputs_per_s": round(done / elapsed, 1), "p50_ms": round(percentile(latencies, 0.5) * 1e3, 1),
                "p99_ms": round(percentile(latencies, 0.99) * 1e3, 1)}

    async def small_beside_large() -> dict:
        large = asyncio.create_task(run([inputs[k % len(inputs)] for k in range(512)]))
        await asyncio.sleep(0.05)  # the large one is running
        started = time.perf_counter()
        await run([inputs[0]])
        small_s = time.perf_counter() - started
        await large
        return {"small_ms": round(small_s * 1e3, 1)}

    await run(inputs[:MAX_BATCH])  # warm-up
    return {"c32x1": await load(32, 1), "c4x32": await load(4, 32), "small_beside_512": await small_beside_large()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each load")
    parser.add_argument("--out", type=Path)
    options = parser.parse_args()
    from transformers import AutoTokenizer

    allow_serve_batch()
    args = ModelAppArgs(source=EMBED_SOURCE, task="embedding", backend="transformers")
    prepared = prepare_model(args.source, tasks.get(args.task).hf_task, revision=None, use_openvino=False,
                             weight_format=args.weight_format, cache_dir=args.effective_cache_dir, progress=print)
    tokenizer = AutoTokenizer.from_pretrained(str(prepared.hf_dir))
    encoder = TorchEncoder(prepared.hf_dir, PoolingSpec.from_model_dir(prepared.hf_dir), tokenizer.pad_token_id,
                           device="cpu", dtype="float32", num_threads=None)
    inputs = [tokenizer(s)["input_ids"] for s in sentences(256)]
    batchers = {
        "SlotBatcher (slots 1)": lambda: SlotBatcher(encoder.encode, max_batch_size=MAX_BATCH, wait_s=WAIT_S,
                                                     slots=1).run,
        "SlotBatcher (slots 2)": lambda: SlotBatcher(encoder.encode, max_batch_size=MAX_BATCH, wait_s=WAIT_S,
                                                     slots=2).run,
        "@serve.batch, 1 at once": lambda: _serve_batch(encoder.encode, 1),
        "@serve.batch, 2 at once": lambda: _serve_batch(encoder.encode, 2),
    }
    runs = {}
    for name, make in batchers.items():
        async def measure(make=make) -> dict:
            return await _measure(make(), inputs, options.seconds)

        runs[name] = asyncio.run(measure())
        print(name, json.dumps(runs[name]))
    result = {"machine": {"cpu": cpu_info().model, "cpus": os.cpu_count(), "platform": platform.platform()},
              "model": EMBED_SOURCE, "engine": "transformers (torch) float32 on cpu", "max_batch_size": MAX_BATCH,
              "batch_wait_timeout_s": WAIT_S, "seconds_each": options.seconds, "runs": runs}
    out = options.out or unused(ROOT / "bench" / "results" / f"encoder-batchers-{datetime.date.today().isoformat()}.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
