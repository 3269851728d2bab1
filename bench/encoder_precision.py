"""`python -m bench.encoder_precision`: the MiniLM encoder on OpenVINO with each inference
precision this CPU offers (f32, bf16 where the CPU has AVX512_BF16 or AMX), in-process,
alternating rounds so that machine noise falls on all alike; inputs/s at batch 1 and 32, and
how far the vectors move from f32's (cosine).

Prints a table and writes bench/results/encoder-precision-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time

import numpy as np

from deployments.engines.encoders import OpenVINOEncoder, PoolingSpec
from hardware.detect import cpu_info

from .raw import embedding_model
from .server import ROOT
from .workload import sentences


def encoder(prepared, pad_id: int, precision: str | None) -> OpenVINOEncoder:
    return OpenVINOEncoder(prepared.openvino_dir, PoolingSpec.from_model_dir(prepared.hf_dir), pad_id, num_threads=None,
                           config={"INFERENCE_PRECISION_HINT": precision} if precision else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per round, batch size and precision")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    prepared, tokenizer = embedding_model(print)
    import openvino as ov

    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    default_precision = str(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT"))
    precisions = ["f32"] + (["bf16"] if "BF16" in capabilities else [])
    encoders = {p: encoder(prepared, tokenizer.pad_token_id, p) for p in precisions}
    texts = sentences(32)
    batches = {b: [tokenizer(t)["input_ids"] for t in texts[:b]] for b in (1, 32)}
    reference = encoders["f32"].encode(batches[32])
    cosine = {p: float(np.min(np.sum(e.encode(batches[32]) * reference, axis=1))) for p, e in encoders.items()}
    rates: dict[str, dict[int, list[float]]] = {p: {b: [] for b in batches} for p in precisions}
    for _ in range(args.rounds):
        for p, enc in encoders.items():
            for b, ids in batches.items():
                enc.encode(ids)
                calls, started = 0, time.perf_counter()
                while time.perf_counter() - started < args.seconds:
                    enc.encode(ids)
                    calls += 1
                rates[p][b].append(calls * b / (time.perf_counter() - started))
    cpu = cpu_info().model
    print(f"\nCPU: {cpu}; OpenVINO {ov.get_version()}; capabilities {capabilities}; default precision {default_precision}\n")
    print("| precision | batch 1 inputs/s | batch 32 inputs/s | min cosine vs f32 (batch 32) |\n|---|---|---|---|")
    for p in precisions:
        print(f"| {p} | {np.median(rates[p][1]):.0f} | {np.median(rates[p][32]):.0f} | {cosine[p]:.6f} |")
    out = ROOT / "bench" / "results" / f"encoder-precision-{datetime.date.today()}.json"
    out.write_text(json.dumps({"cpu": cpu, "openvino": ov.get_version(), "capabilities": list(capabilities),
                               "default_precision": default_precision, "rounds": args.rounds, "seconds": args.seconds,
                               "inputs_per_s": {p: {str(b): [round(v, 1) for v in r] for b, r in rates[p].items()} for p in precisions},
                               "min_cosine_vs_f32": cosine}, indent=2) + "\n")
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
