"""The transformers generation engine on the library's continuous batching against the static
@serve.batch loop it replaced (read from git at OLD_REV), in one process, with the packaged
SmolLM2 on CPU: tok/s and TTFT at c=1 and at c=16 with staggered arrivals, and how long a short
request sent while a long stream decodes takes against the long stream's remaining time; and
vLLM's engine beside them where the environment imports vLLM (bench/gpu_check.sh on a GPU).

    make bench-transformers    (.venv/bin/python -m bench.transformers_cb [--vllm-python PY] [--out FILE])

Results go to bench/results/transformers-cb-<date>.json (or -2, -3, ... if taken).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from contract import tasks
from contract.config import ModelAppArgs
from contract.engine import SamplingParams
from deployments.model_files import context_length, eos_token_ids, load_tokenizer
from deployments.sources import prepare_model
from hardware.detect import cpu_info, vllm_version

from .outside_replica import allow_serve_batch
from .stats import closed_loop, generation_run, ratio, unused
from .workload import CHAT_SOURCE, chat_messages

ROOT = Path(__file__).resolve().parent.parent
OLD_REV = "b2da1a0"  # the last commit with the static-batch loop
OLD_PATH = "deployments/engines/transformers_generation.py"
TOKENS, ROUNDS, STAGGER_S = 32, 2, 0.2
LONG_TOKENS, SHORT_TOKENS = 256, 8
OLD, NEW, VLLM = "static batches (old)", "continuous batching (new)", "vllm"
OLD_ID, NEW_ID = "old", "new"  # as --engines names them


def _old_engine_class():
    """The replaced engine, as it was at OLD_REV, imported beside the new one."""
    source = subprocess.run(["git", "show", f"{OLD_REV}:{OLD_PATH}"], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout
    name = "deployments.engines.transformers_static_batching"
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "deployments.engines"
    sys.modules[name] = module
    exec(compile(source, f"{OLD_REV}:{OLD_PATH}", "exec"), module.__dict__)  # noqa: S102 - our own history
    allow_serve_batch()
    return module.TransformersGenerationEngine


def _engines(hf_dir: Path, tokenizer, eos: list[int], device: str, dtype: str, names: set[str]):
    from deployments.engines.transformers_generation import TransformersGenerationEngine

    args = ModelAppArgs(source=CHAT_SOURCE, task="text-generation", backend="transformers")
    if OLD in names:
        try:
            old = _old_engine_class()
        except (OSError, subprocess.CalledProcessError) as exc:  # a copy without git history (a device machine)
            print(f"the static loop is not measured: {OLD_REV}:{OLD_PATH} cannot be read ({exc})")
        else:
            yield OLD, old(hf_dir, tokenizer, eos_token_ids=eos, device=device, dtype=dtype,
                           max_batch_size=args.effective_max_batch_size,
                           batch_wait_timeout_s=args.effective_batch_wait_timeout_s)
    if NEW in names:
        yield NEW, TransformersGenerationEngine(
            hf_dir, tokenizer, eos_token_ids=eos, device=device, dtype=dtype, max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens, kv_cache_gb=args.kv_cache_gb,
            max_model_len=context_length(hf_dir, default=2048))
    if VLLM in names:
        from deployments.engines.vllm_generation import VLLMGenerationEngine

        yield VLLM, VLLMGenerationEngine(
            hf_dir, eos_token_ids=eos, device=device, dtype=dtype, max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens, kv_cache_gb=args.kv_cache_gb,
            max_model_len=context_length(hf_dir, default=2048))


def _vllm_elsewhere(python: str, options) -> dict:
    """vLLM's run from another environment (vLLM needs transformers >= 5.16, whose continuous
    batching the transformers engine does not run on): the same bench, its engine alone, right after."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "vllm.json"
        subprocess.run([python, "-m", "bench.transformers_cb", "--engines", VLLM, "--device", options.device,
                        "--dtype", options.dtype, "--concurrency", options.concurrency, "--out", str(out)],
                       cwd=ROOT, check=True)
        return json.loads(out.read_text())["runs"][VLLM]


async def _measure(engine, prompts: list[list[int]], levels: list[int]) -> dict:
    async def one(prompt, max_tokens: int, marks: dict | None = None) -> tuple[float, int]:
        started = time.perf_counter()
        first, tokens = None, 0
        async for delta in engine.generate(prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0)):
            if first is None and delta.token_ids:
                first = time.perf_counter() - started
            tokens += len(delta.token_ids)
            if marks is not None and tokens >= 16:
                marks["decoding"].set()
        return first or 0.0, tokens

    await one(prompts[0], 8)  # warm-up
    runs = {}
    for c in levels:  # c > 1: client i starts i * STAGGER_S late, then sends ROUNDS requests back to back
        total, stagger = (3, 0.0) if c == 1 else (c * ROUNDS, STAGGER_S)
        measured = await closed_loop(c, total, lambda i: one(prompts[i % len(prompts)], TOKENS), stagger)
        runs[f"c{c}"] = {**generation_run(c, measured).as_dict(), "stagger_s": stagger}
    marks = {"decoding": asyncio.Event()}
    times: dict[str, float] = {}

    async def long() -> None:
        await one(prompts[1], LONG_TOKENS, marks)
        times["long_done"] = time.perf_counter()

    async def short() -> None:
        await marks["decoding"].wait()
        times["short_sent"] = time.perf_counter()
        await one(prompts[2], SHORT_TOKENS)
        times["short_done"] = time.perf_counter()

    await asyncio.gather(long(), short())
    short_s = times["short_done"] - times["short_sent"]
    long_left_s = times["long_done"] - times["short_sent"]
    return {**runs, "short_while_long": {"short_s": round(short_s, 3), "long_remaining_s": round(long_left_s, 3),
                                 "ratio": ratio(short_s, long_left_s)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (bench/gpu_check.sh)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--concurrency", default="1,16", help="client counts; above 1, arrivals are staggered")
    parser.add_argument("--engines", default=",".join((OLD_ID, NEW_ID, VLLM)),
                        help="which to run: old, new, vllm (vllm where this environment imports it)")
    parser.add_argument("--vllm-python", help="a python with vLLM (e.g. the runtime_env's venv): runs vLLM there")
    parser.add_argument("--out", type=Path)
    options = parser.parse_args()
    names = {{OLD_ID: OLD, NEW_ID: NEW}.get(name, name) for name in options.engines.split(",")}
    if not vllm_version():
        names.discard(VLLM)
    levels = [int(c) for c in options.concurrency.split(",")]
    args = ModelAppArgs(source=CHAT_SOURCE, task="text-generation", backend="transformers")
    prepared = prepare_model(args.source, tasks.get(args.task).hf_task, revision=None, use_openvino=False,
                             weight_format=args.weight_format, cache_dir=args.effective_cache_dir, progress=print)
    tokenizer = load_tokenizer(prepared.hf_dir)
    eos = eos_token_ids(prepared.hf_dir, tokenizer)
    prompts = [tokenizer(tokenizer.apply_chat_template(chat_messages(i), add_generation_prompt=True, tokenize=False),
                         add_special_tokens=False)["input_ids"] for i in range(16)]
    runs = {}
    for name, engine in _engines(prepared.hf_dir, tokenizer, eos, options.device, options.dtype, names):
        runs[name] = asyncio.run(_measure(engine, prompts, levels))
        engine.shutdown()
        print(name, json.dumps(runs[name]))
    if options.vllm_python:
        runs[VLLM] = _vllm_elsewhere(options.vllm_python, options)
        print(VLLM, json.dumps(runs[VLLM]))
    result = {
        "machine": {"cpu": cpu_info().model, "cpus": os.cpu_count(), "platform": platform.platform()},
        "device": options.device, "dtype": options.dtype, "model": CHAT_SOURCE, "old_rev": OLD_REV,
        "tokens_per_request": TOKENS, "runs": runs,
    }
    if OLD in runs and NEW in runs:
        old, new, top = runs[OLD], runs[NEW], f"c{max(levels)}"
        targets = result["targets"] = {
            f"{top}_ttft_p50_new_over_old": ratio(new[top]["ttft_p50_ms"], old[top]["ttft_p50_ms"]),
            f"{top}_tok_s_new_over_old": ratio(new[top]["tokens_per_s"], old[top]["tokens_per_s"]),
            "short_over_long_remaining_new": new["short_while_long"]["ratio"],
        }
        result["met"] = {f"{top} TTFT p50 <= 0.5x old": targets[f"{top}_ttft_p50_new_over_old"] <= 0.5,
                         f"{top} tok/s >= old": targets[f"{top}_tok_s_new_over_old"] >= 1.0,
                         "short < 0.3x long's remaining": targets["short_over_long_remaining_new"] < 0.3}
        if VLLM in runs:  # the GPU target: vLLM at 5x the old loop's tok/s
            targets[f"{top}_tok_s_vllm_over_old"] = ratio(runs[VLLM][top]["tokens_per_s"], old[top]["tokens_per_s"])
            result["met"][f"{top} vLLM tok/s >= 5x old"] = targets[f"{top}_tok_s_vllm_over_old"] >= 5.0
        print(json.dumps({"targets": targets, "met": result["met"]}, indent=1))
    out = options.out or unused(ROOT / "bench" / "results" / f"transformers-cb-{datetime.date.today().isoformat()}.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
