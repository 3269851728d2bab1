"""`python -m bench.encoder_streams`: the MiniLM encoder on OpenVINO, in-process, one stream
(LATENCY hint: one batch at a time on every core, what hfserve ran until issue 12) against the
THROUGHPUT hint's streams (`encoder_streams: auto`, one batch per stream at once, driven by as
many threads), alternating rounds so that machine noise falls on both alike: inputs/s and the
process's CPU ms per input, at batch 1, 2, 8 and 32.

Prints a table and writes bench/results/encoder-streams-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import threading
import time

from deployments.engines.encoders import OpenVINOEncoder, PoolingSpec
from hardware.detect import cpu_info

from .raw import embedding_model
from .server import ROOT
from .workload import sentences

BATCHES = (1, 2, 8, 32)


def measure(encoder: OpenVINOEncoder, batch: list[list[int]], seconds: float) -> tuple[float, float]:
    """(inputs/s, CPU ms per input) with `encoder.concurrency` threads encoding `batch` in a loop."""
    done = [0] * encoder.concurrency
    stop = time.perf_counter() + seconds

    def loop(i: int) -> None:
        while time.perf_counter() < stop:
            encoder.encode(batch)
            done[i] += len(batch)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(encoder.concurrency)]
    wall, cpu = time.perf_counter(), time.process_time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return sum(done) / wall, cpu / sum(done) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per round, batch size and setting")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    prepared, tokenizer = embedding_model(print)
    spec = PoolingSpec.from_model_dir(prepared.hf_dir)
    encoders = {"1 stream": OpenVINOEncoder(prepared.openvino_dir, spec, tokenizer.pad_token_id, num_threads=None, streams=1),
                "auto": OpenVINOEncoder(prepared.openvino_dir, spec, tokenizer.pad_token_id, num_threads=None, streams=None)}
    texts = sentences(max(BATCHES))
    batches = {b: [tokenizer(t)["input_ids"] for t in texts[:b]] for b in BATCHES}
    runs: dict[str, dict[int, list[tuple[float, float]]]] = {name: {b: [] for b in BATCHES} for name in encoders}
    for _ in range(args.rounds):
        for b, batch in batches.items():
            for name, encoder in encoders.items():
                encoder.encode(batch)  # warm-up at this shape
                runs[name][b].append(measure(encoder, batch, args.seconds))
    report = {
        "cpu": cpu_info().model, "date": str(datetime.date.today()), "seconds": args.seconds, "rounds": args.rounds,
        "concurrency": {name: encoder.concurrency for name, encoder in encoders.items()},
        "runs": {name: {str(b): [{"inputs_per_s": round(r, 1), "cpu_ms_per_input": round(c, 3)} for r, c in values]
                        for b, values in by_batch.items()} for name, by_batch in runs.items()},
    }
    print(f"\nCPU: {report['cpu']}; batches at once: {report['concurrency']}\n")
    print("| batch | 1 stream: inputs/s | CPU ms/input | auto: inputs/s | CPU ms/input |\n|---|---|---|---|---|")
    for b in BATCHES:
        cells = []
        for name in encoders:
            rates = "/".join(f"{r:.0f}" for r, _ in runs[name][b])
            cpus = "/".join(f"{c:.2f}" for _, c in runs[name][b])
            cells += [rates, cpus]
        print(f"| {b} | " + " | ".join(cells) + " |")
    path = ROOT / "bench" / "results" / f"encoder-streams-{datetime.date.today()}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
