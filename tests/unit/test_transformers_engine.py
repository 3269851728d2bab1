"""The transformers engine on the library's continuous batching, with the tiny llama on CPU:
greedy output equals `model.generate`'s whatever else runs beside it, a short request joins a
long stream mid-flight and ends first, a closed stream is cancelled in the manager, and each
request keeps its own sampling, stops, log-probabilities and grammar."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch

from contract.engine import SamplingParams
from contract.structured_outputs import Constraint
from deployments.engines.transformers_generation import TransformersGenerationEngine

# The second is longer than a step's budget (32 tokens below): its prefill is chunked.
PROMPTS = [[5, 6, 7, 8], list(range(9, 59)), [30, 31]]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    from transformers import AutoTokenizer

    from tests.tiny_models import build_tiny_llama

    path = build_tiny_llama(tmp_path_factory.mktemp("llama") / "tiny-llama")
    return path, AutoTokenizer.from_pretrained(str(path))


@pytest.fixture(scope="module")
def engine(llama):
    path, tokenizer = llama
    engine = TransformersGenerationEngine(path, tokenizer, eos_token_ids=[tokenizer.convert_tokens_to_ids("<|im_end|>")],
                                          max_num_batched_tokens=32, max_model_len=512)
    yield engine
    engine.shutdown()


def run(coroutine):
    return asyncio.run(coroutine)


async def _collect(engine, prompt, **fields):
    deltas = [delta async for delta in engine.generate(prompt, SamplingParams(**fields))]
    return [t for d in deltas for t in d.token_ids], deltas


def test_greedy_output_is_model_generates_with_other_requests_beside_it(engine, llama):
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(str(llama[0])).eval()  # the engine's model runs paged attention now

    async def together():
        return await asyncio.gather(*(_collect(engine, p, max_tokens=24, temperature=0.0) for p in PROMPTS),
                                    _collect(engine, [40, 41, 42], max_tokens=40, temperature=1.3, seed=1))

    results = run(together())
    for prompt, (tokens, deltas) in zip(PROMPTS, results, strict=False):
        expected = reference.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False, eos_token_id=None)
        assert tokens == expected[0, len(prompt):].tolist()
        assert [d.finish_reason for d in deltas][-1] == "length" and all(d.finish_reason is None for d in deltas[:-1])
    assert engine.running() == 0


def test_a_short_request_joins_a_long_stream_and_ends_first(engine):
    async def scenario():
        order: list[str] = []
        long_started = asyncio.Event()

        async def long():
            async for delta in engine.generate(PROMPTS[0], SamplingParams(max_tokens=300, temperature=0.0)):
                long_started.set()
                if delta.finish_reason:
                    order.append("long")

        async def short():
            await long_started.wait()
            tokens, _ = await _collect(engine, PROMPTS[2], max_tokens=4, temperature=0.0)
            assert len(tokens) == 4
            order.append("short")

        await asyncio.gather(long(), short())
        return order

    assert run(scenario()) == ["short", "long"]


def test_a_closed_stream_is_cancelled_and_the_engine_serves_on(engine):
    async def scenario():
        before = engine.stats().cancelled_requests_total
        stream = engine.generate(PROMPTS[1], SamplingParams(max_tokens=400, temperature=0.0))
        seen = 0
        async for delta in stream:
            seen += len(delta.token_ids)
            if seen >= 3:
                break
        await stream.aclose()
        assert engine.running() == 0 and engine.stats().cancelled_requests_total == before + 1
        tokens, _ = await _collect(engine, PROMPTS[0], max_tokens=5, temperature=0.0)
        assert len(tokens) == 5
        # The manager keeps a result handler until a request finishes; a cancelled one never
        # does, so the engine drops it: none are left.
        assert engine._manager.output_router.result_handlers == {}
        assert engine._manager.output_router.output_queue.empty()

    run(scenario())


def test_each_request_keeps_its_own_seed_stops_and_logprobs(engine):
    greedy, _ = run(_collect(engine, PROMPTS[0], max_tokens=12, temperature=0.0))

    async def scenario():
        return await asyncio.gather(
            _collect(engine, PROMPTS[0], max_tokens=12, temperature=1.0, seed=7),
            _collect(engine, PROMPTS[0], max_tokens=12, temperature=1.0, seed=7),
            _collect(engine, PROMPTS[0], max_tokens=12, temperature=0.0, stop_token_ids=(greedy[3],)),
            _collect(engine, PROMPTS[0], max_tokens=3, temperature=0.0, logprobs=2),
            _collect(engine, PROMPTS[0], max_tokens=12, temperature=0.0, logit_bias=((greedy[0], -100.0),)),
        )

    (a, _), (b, _), (stopped, stop_deltas), (with_logprobs, lp_deltas), (biased, _) = run(scenario())
    assert a == b != greedy  # the seed, not the batch, decides
    assert stopped == greedy[:4] and stop_deltas[-1].finish_reason == "stop"
    logprobs = [lp for d in lp_deltas for lp in d.logprobs]
    assert len(logprobs) == 3 and with_logprobs == greedy[:3]
    for token, logprob in zip(with_logprobs, logprobs, strict=True):
        assert logprob.top[0][0] == token and logprob.logprob == logprob.top[0][1] < 0 and len(logprob.top) == 2
    assert biased[0] != greedy[0]


def test_a_json_schema_holds_in_the_batch(engine, llama):
    _, tokenizer = llama
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], "additionalProperties": False}
    tokens, deltas = run(_collect(engine, PROMPTS[0], max_tokens=40, temperature=1.0, seed=3,
                                  constraint=Constraint("json_schema", json.dumps(schema))))
    assert deltas[-1].finish_reason == "stop"
    assert set(json.loads(tokenizer.decode(tokens[:-1]))) == {"n"}


def test_past_max_num_seqs_requests_wait_and_are_counted(llama):
    path, tokenizer = llama
    engine = TransformersGenerationEngine(path, tokenizer, eos_token_ids=[tokenizer.convert_tokens_to_ids("<|im_end|>")],
                                          max_num_seqs=1, max_model_len=512)

    async def scenario():
        first = engine.generate(PROMPTS[0], SamplingParams(max_tokens=50, temperature=0.0))
        await anext(first)  # running, and holding the one seat
        second = asyncio.create_task(_collect(engine, PROMPTS[2], max_tokens=3, temperature=0.0))
        while engine.stats().waiting_requests == 0:
            await asyncio.sleep(0.01)
        stats = engine.stats()
        assert stats.running_requests == 1 and 0 < stats.kv_cache_usage < 1
        await first.aclose()
        tokens, _ = await second
        return tokens

    try:
        assert len(run(scenario())) == 3
        assert engine.stats().waiting_requests == 0 and engine.running() == 0
    finally:
        engine.shutdown()
