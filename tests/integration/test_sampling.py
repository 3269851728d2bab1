"""vLLM's sampling extras through HTTP with the official openai client (extra_body), on both
engines: each changes the output as it should, and none is silently ignored."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

ENGINES = ["tiny-llama", "tiny-llama-hf"]  # OpenVINO GenAI, transformers
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def tokenizer(server):
    return AutoTokenizer.from_pretrained(str(server.models["llama"]))


def _complete(server, model: str, **fields):
    extra = {k: fields.pop(k) for k in list(fields) if k not in ("max_tokens", "temperature", "seed", "stop", "n")}
    return server.openai().completions.create(model=model, prompt=PROMPT, extra_body=extra or None, **fields)


@pytest.mark.parametrize("model", ENGINES)
def test_top_k_1_is_greedy_at_any_temperature(server, model):
    greedy = _complete(server, model, max_tokens=8, temperature=0).choices[0].text
    for seed in range(3):
        assert _complete(server, model, max_tokens=8, temperature=1.5, seed=seed, top_k=1).choices[0].text == greedy


@pytest.mark.parametrize("model", ENGINES)
def test_stop_token_ids_end_the_text_and_min_tokens_holds_them_back(server, tokenizer, model):
    text = _complete(server, model, max_tokens=1, temperature=0).choices[0].text
    # A byte-level vocabulary: exactly one token decodes to the text of the first greedy token.
    [first] = [token for token in range(len(tokenizer)) if tokenizer.decode([token]) == text]
    stopped = _complete(server, model, max_tokens=8, temperature=0, stop_token_ids=[first])
    assert stopped.choices[0].finish_reason == "stop" and stopped.usage.completion_tokens == 1
    held = _complete(server, model, max_tokens=8, temperature=0, stop_token_ids=[first], min_tokens=5)
    assert held.usage.completion_tokens >= 5


@pytest.mark.parametrize("model", ENGINES)
def test_min_tokens_and_ignore_eos_reach_their_lengths(server, model):
    full = _complete(server, model, max_tokens=24, temperature=0.8, seed=1, min_tokens=24, ignore_eos=True)
    assert full.usage.completion_tokens == 24 and full.choices[0].finish_reason == "length"
    at_least = _complete(server, model, max_tokens=24, temperature=0.8, seed=1, min_tokens=16)
    assert at_least.usage.completion_tokens >= 16


@pytest.mark.parametrize("model", ENGINES)
def test_repetition_penalty_changes_greedy_output(server, model):
    plain = _complete(server, model, max_tokens=24, temperature=0).choices[0].text
    penalised = _complete(server, model, max_tokens=24, temperature=0, repetition_penalty=1.8).choices[0].text
    assert penalised != plain
    assert _complete(server, model, max_tokens=24, temperature=0, repetition_penalty=1.0).choices[0].text == plain


@pytest.mark.parametrize("model", ENGINES)
def test_the_stop_string_is_kept_when_asked(server, model):
    plain = _complete(server, model, max_tokens=16, temperature=0).choices[0].text
    stop = plain[len(plain) // 2 : len(plain) // 2 + 2]
    assert stop.strip(), plain
    cut = _complete(server, model, max_tokens=16, temperature=0, stop=[stop]).choices[0].text
    kept = _complete(server, model, max_tokens=16, temperature=0, stop=[stop], include_stop_str_in_output=True)
    assert kept.choices[0].text == cut + stop and kept.choices[0].finish_reason == "stop"


def test_logit_bias_on_transformers_and_its_special_tokens(server, tokenizer):
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ended = _complete(server, "tiny-llama-hf", max_tokens=8, temperature=0, logit_bias={str(eos): 100})
    assert ended.usage.completion_tokens == 1 and ended.choices[0].finish_reason == "stop"
    assert ended.choices[0].text == ""
    shown = _complete(server, "tiny-llama-hf", max_tokens=3, temperature=0, logit_bias={str(eos): 100},
                      ignore_eos=True, skip_special_tokens=False)
    assert shown.choices[0].text == "<|im_end|>" * 3 and shown.choices[0].finish_reason == "length"


def test_a_stream_honours_the_extras_too(server):
    client = server.openai()
    greedy = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="tiny-llama", messages=[{"role": "user", "content": "hi"}], max_tokens=8, temperature=0, stream=True))
    sampled = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="tiny-llama", messages=[{"role": "user", "content": "hi"}], max_tokens=8, temperature=1.5, stream=True,
        extra_body={"top_k": 1}))
    assert sampled == greedy
