"""The engines in-process, with no Ray, HTTP or tokenisation on the measured path."""

from __future__ import annotations

import asyncio
import threading
import time

from contract import tasks
from contract.config import ModelAppArgs
from contract.engine import SamplingParams
from deployments.engines.encoders import OpenVINOEncoder, PoolingSpec
from deployments.engines.openvino_genai import OpenVINOGenerationEngine
from deployments.model_files import eos_token_ids, load_tokenizer
from deployments.sources import prepare_model

from .stats import EmbeddingRun, GenerationRun, closed_loop, generation_run, percentile
from .workload import CHAT_SOURCE, EMBED_SOURCE, NEW_TOKENS, chat_messages, sentences


def _args(source: str, task: str) -> ModelAppArgs:
    return ModelAppArgs(source=source, task=task)


def chat_engine_runs(concurrency_levels: list[int], rounds: int, say, steady: bool = True,
                     num_threads: int | None = None) -> dict[int, GenerationRun]:
    args = _args(CHAT_SOURCE, "text-generation")
    prepared = prepare_model(args.source, tasks.get(args.task).hf_task, revision=None, use_openvino=True,
                             weight_format=args.weight_format, cache_dir=args.effective_cache_dir, progress=say)
    tokenizer = load_tokenizer(prepared.hf_dir)
    engine = OpenVINOGenerationEngine(
        prepared.openvino_dir, eos_token_ids=eos_token_ids(prepared.hf_dir, tokenizer),
        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens, kv_cache_gb=args.kv_cache_gb,
        num_threads=num_threads,
    )
    prompts = [
        tokenizer(tokenizer.apply_chat_template(chat_messages(i), add_generation_prompt=True, tokenize=False),
                  add_special_tokens=False)["input_ids"]
        for i in range(64)
    ]
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0)

    async def one(prompt) -> tuple[float, int]:
        started = time.perf_counter()
        first, tokens = None, 0
        async for delta in engine.generate(prompt, params):
            if first is None and delta.token_ids:
                first = time.perf_counter() - started
            tokens += len(delta.token_ids)
        return first or 0.0, tokens

    async def measure(concurrency: int) -> GenerationRun:
        warm = time.perf_counter()
        await asyncio.gather(*(one(prompts[i]) for i in range(concurrency)))  # warm-up
        stagger = (time.perf_counter() - warm) / concurrency if steady else 0.0
        results = await closed_loop(concurrency, rounds * concurrency, lambda i: one(prompts[i % len(prompts)]), stagger)
        return generation_run(concurrency, results)

    try:
        return {c: asyncio.run(measure(c)) for c in concurrency_levels}
    finally:
        engine.shutdown()


def embedding_model(say):
    """The bench's embedding model converted (cached) to OpenVINO IR, and its tokenizer."""
    from transformers import AutoTokenizer

    args = _args(EMBED_SOURCE, "embedding")
    prepared = prepare_model(args.source, tasks.get(args.task).hf_task, revision=None, use_openvino=True,
                             weight_format=args.weight_format, cache_dir=args.effective_cache_dir, progress=say)
    return prepared, AutoTokenizer.from_pretrained(str(prepared.hf_dir))


def embedding_engine_runs(batch_sizes: list[int], seconds_each: float, say) -> dict[int, EmbeddingRun]:

    args = _args(EMBED_SOURCE, "embedding")
    prepared, tokenizer = embedding_model(say)
    # As the server builds it (encoder_streams: auto), driven by as many threads as it runs
    # batches at once: the engine's best at each batch size.
    encoder = OpenVINOEncoder(prepared.openvino_dir, PoolingSpec.from_model_dir(prepared.hf_dir), tokenizer.pad_token_id,
                              num_threads=None, streams=None if args.encoder_streams == "auto" else args.encoder_streams)
    runs = {}
    for batch in batch_sizes:
        ids = [tokenizer(s)["input_ids"] for s in sentences(batch)]
        encoder.encode(ids)  # warm-up
        latencies: list[float] = []
        started = time.perf_counter()

        def loop(ids=ids, latencies=latencies, started=started) -> None:
            while time.perf_counter() - started < seconds_each:
                t = time.perf_counter()
                encoder.encode(ids)
                latencies.append(time.perf_counter() - t)

        threads = [threading.Thread(target=loop) for _ in range(encoder.concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        runs[batch] = EmbeddingRun(encoder.concurrency, batch, len(latencies), time.perf_counter() - started,
                                   percentile(latencies, 0.5) * 1e3)
    return runs
