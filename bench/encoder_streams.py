"""`python -m bench.encoder_streams`: the MiniLM encoder on OpenVINO, in-process, one stream
(LATENCY hint: one batch at a time on every core, what hfserve ran until issue 12) against the
THROUGHPUT hint's streams (`encoder_streams: auto`, one batch per stream at once, driven by as
many threads), alternating rounds so that machine noise falls on both alike: inputs/s and the
process's CPU ms per input, at batch 1, 2, 8 and 32.

`--engine classifier` measures the rerank and classification engine instead: the same MiniLM
exported as a sequence classifier (its head untrained: the compute is that of a MiniLM-L6
cross-encoder such as ms-marco-MiniLM-L-6-v2), scoring query-document pairs in f32 as hfserve
does with fp32 weights.

Prints a table and writes bench/results/encoder-streams-<date>.json (classifier-streams-<date>.json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import threading
import time

from contract.config import default_cache_dir
from deployments.engines.classifiers import OpenVINOClassifier, Sequence
from deployments.engines.encoders import OpenVINOEncoder, PoolingSpec
from deployments.model_files import load_tokenizer
from deployments.sources import prepare_model
from hardware.detect import cpu_info

from .raw import embedding_model
from .server import ROOT
from .workload import EMBED_SOURCE, sentences

BATCHES = (1, 2, 8, 32)


def measure(compute, concurrency: int, batch: list, seconds: float) -> tuple[float, float]:
    """(inputs/s, CPU ms per input) with `concurrency` threads computing `batch` in a loop."""
    done = [0] * concurrency
    stop = time.perf_counter() + seconds

    def loop(i: int) -> None:
        while time.perf_counter() < stop:
            compute(batch)
            done[i] += len(batch)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(concurrency)]
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
    parser.add_argument("--engine", choices=("encoder", "classifier"), default="encoder")
    args = parser.parse_args()
    texts = sentences(max(BATCHES))
    if args.engine == "encoder":
        prepared, tokenizer = embedding_model(print)
        spec = PoolingSpec.from_model_dir(prepared.hf_dir)
        engines = {name: OpenVINOEncoder(prepared.openvino_dir, spec, tokenizer.pad_token_id, num_threads=None, streams=streams)
                   for name, streams in (("1 stream", 1), ("auto", None))}
        batches = {b: [tokenizer(t)["input_ids"] for t in texts[:b]] for b in BATCHES}
        computes = {name: engine.encode for name, engine in engines.items()}
    else:
        prepared = prepare_model(EMBED_SOURCE, "text-classification", revision=None, use_openvino=True,
                                 weight_format="fp32", cache_dir=default_cache_dir(), progress=print)
        tokenizer = load_tokenizer(prepared.hf_dir)
        engines = {name: OpenVINOClassifier(prepared.openvino_dir, tokenizer.pad_token_id, num_threads=None, streams=streams)
                   for name, streams in (("1 stream", 1), ("auto", None))}
        query = "how do bees make honey and what changes over time"
        encoded = [tokenizer(query, t) for t in texts]
        batches = {b: [Sequence(e["input_ids"], e["token_type_ids"]) for e in encoded[:b]] for b in BATCHES}
        computes = {name: engine.logits for name, engine in engines.items()}
    runs: dict[str, dict[int, list[tuple[float, float]]]] = {name: {b: [] for b in BATCHES} for name in engines}
    for _ in range(args.rounds):
        for b, batch in batches.items():
            for name, engine in engines.items():
                computes[name](batch)  # warm-up at this shape
                runs[name][b].append(measure(computes[name], engine.concurrency, batch, args.seconds))
    report = {
        "engine": args.engine, "cpu": cpu_info().model, "date": str(datetime.date.today()), "seconds": args.seconds,
        "rounds": args.rounds, "concurrency": {name: engine.concurrency for name, engine in engines.items()},
        "runs": {name: {str(b): [{"inputs_per_s": round(r, 1), "cpu_ms_per_input": round(c, 3)} for r, c in values]
                        for b, values in by_batch.items()} for name, by_batch in runs.items()},
    }
    print(f"\nCPU: {report['cpu']}; batches at once: {report['concurrency']}\n")
    print("| batch | 1 stream: inputs/s | CPU ms/input | auto: inputs/s | CPU ms/input |\n|---|---|---|---|---|")
    for b in BATCHES:
        cells = []
        for name in engines:
            rates = "/".join(f"{r:.0f}" for r, _ in runs[name][b])
            cpus = "/".join(f"{c:.2f}" for _, c in runs[name][b])
            cells += [rates, cpus]
        print(f"| {b} | " + " | ".join(cells) + " |")
    path = ROOT / "bench" / "results" / f"{args.engine}-streams-{datetime.date.today()}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
