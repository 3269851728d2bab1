"""The transformers engine's sampling of one row (RowSampler): every sampling field changes the
next token as vLLM's sampler would, with transformers' own warpers doing the filtering, and a
structured-output constraint (xgrammar's mask) holds whatever the model's logits say."""

from __future__ import annotations

import json
import re

import pytest
import torch

from contract.engine import SamplingParams
from contract.structured_outputs import Constraint
from deployments.engines.row_sampler import RowSampler
from deployments.grammars import GrammarCompiler

EOS = 0
LOGITS = torch.tensor([3.0, 2.5, 2.0, 1.0, 0.5, -1.0])  # token 0 (EOS) is the most likely


def _next(prompt=(4,), generated=(), **fields) -> int:
    params = SamplingParams(max_tokens=16, **fields)
    return RowSampler(torch, params, {EOS}, "cpu").next_token(LOGITS, list(prompt), list(generated))


def test_top_k_1_is_greedy_at_any_temperature():
    assert {_next(temperature=1.9, top_k=1, seed=seed) for seed in range(40)} == {_next(temperature=0.0)} == {0}


def test_top_k_and_min_p_keep_only_the_likeliest():
    drawn = {_next(temperature=1.5, top_k=2, seed=seed) for seed in range(200)}
    assert drawn == {0, 1}
    # min_p 0.5: tokens below half the top probability are dropped (exp(2.0 - 3.0) < 0.5).
    assert {_next(temperature=1.0, min_p=0.5, seed=seed) for seed in range(200)} == {0, 1}


def test_min_tokens_holds_back_eos_and_the_stop_ids():
    assert _next(temperature=0.0, min_tokens=2, generated=(3,)) == 1
    assert _next(temperature=0.0, min_tokens=2, generated=(3,), stop_token_ids=(1,)) == 2
    assert _next(temperature=0.0, min_tokens=2, generated=(3, 3)) == 0  # reached: EOS is back


def test_logit_bias_moves_the_choice():
    assert _next(temperature=0.0, logit_bias=((5, 100.0),)) == 5
    assert _next(temperature=0.0, logit_bias=((0, -100.0),)) == 1


def test_repetition_penalty_discourages_tokens_of_the_prompt_and_output():
    assert _next(temperature=0.0, prompt=(0,), repetition_penalty=1.5) == 1  # 3.0 / 1.5 < 2.5
    assert _next(temperature=0.0, prompt=(0,), generated=(1,), repetition_penalty=2.0) == 2  # 1.5, 1.25 < 2.0
    assert _next(temperature=0.0, prompt=(0,), repetition_penalty=1.0) == 0


@pytest.mark.parametrize("field", ["presence_penalty", "frequency_penalty"])
def test_openai_penalties_count_only_the_output(field):
    assert _next(temperature=0.0, prompt=(0,), **{field: 2.0}) == 0
    assert _next(temperature=0.0, generated=(0,), **{field: 2.0}) == 1


def test_a_seed_draws_the_same_tokens():
    params = SamplingParams(max_tokens=16, temperature=1.5, seed=7)
    first = RowSampler(torch, params, {EOS}, "cpu")
    second = RowSampler(torch, params, {EOS}, "cpu")
    assert [first.next_token(LOGITS, [4], []) for _ in range(20)] == [second.next_token(LOGITS, [4], []) for _ in range(20)]


RAW = torch.log_softmax(LOGITS, dim=-1)


@pytest.mark.parametrize("fields", [
    {"temperature": 0.0},
    {"temperature": 0.3, "seed": 1, "top_k": 2},
    {"temperature": 0.0, "logit_bias": ((5, 100.0),), "repetition_penalty": 2.0, "frequency_penalty": 1.0},
])
def test_logprobs_are_the_models_own_whatever_changes_the_draw(fields):
    params = SamplingParams(max_tokens=16, logprobs=3, **fields)
    sampler = RowSampler(torch, params, {EOS}, "cpu")
    token = sampler.next_token(LOGITS, [0], [0])
    entry = sampler.logprobs(LOGITS, token)
    assert entry.logprob == pytest.approx(float(RAW[token]))
    assert [t for t, _ in entry.top] == [0, 1, 2]  # the likeliest first, as the model ranks them
    assert [v for _, v in entry.top] == pytest.approx(RAW[:3].tolist())


def test_logprobs_0_gives_the_sampled_token_alone():
    sampler = RowSampler(torch, SamplingParams(max_tokens=16, temperature=0.0, logprobs=0), {EOS}, "cpu")
    entry = sampler.logprobs(LOGITS, sampler.next_token(LOGITS, [4], []))
    assert entry.logprob == pytest.approx(float(RAW[0])) and entry.top == ()


@pytest.fixture(scope="module")
def llama_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    from tests.tiny_models import build_tiny_llama

    return AutoTokenizer.from_pretrained(str(build_tiny_llama(tmp_path_factory.mktemp("llama") / "tiny-llama")))


@pytest.mark.parametrize("constraint,valid", [
    (Constraint("json_schema", json.dumps({"type": "object", "properties": {"n": {"type": "integer"},
                                                                            "ok": {"enum": ["yes", "no"]}},
                                           "required": ["n", "ok"], "additionalProperties": False})),
     lambda text: set(json.loads(text)) == {"n", "ok"} and json.loads(text)["ok"] in ("yes", "no")),
    (Constraint("regex", "[0-9]{3}-[a-c]+"), lambda text: re.fullmatch("[0-9]{3}-[a-c]+", text) is not None),
    (Constraint("grammar", 'root ::= "red" | "green" | "blue"'), lambda text: text in ("red", "green", "blue")),
])
def test_a_constraint_holds_whatever_the_logits_say(llama_tokenizer, constraint, valid):
    eos = llama_tokenizer.convert_tokens_to_ids("<|im_end|>")
    compiler = GrammarCompiler(llama_tokenizer, len(llama_tokenizer), [eos])
    for seed in range(5):  # random logits: the mask alone makes the text valid
        torch.manual_seed(seed)
        sampler = RowSampler(torch, SamplingParams(max_tokens=64, temperature=1.0, seed=seed), {eos}, "cpu",
                             compiler.matcher(constraint))
        generated: list[int] = []
        while not generated or generated[-1] != eos:
            generated.append(sampler.next_token(torch.randn(len(llama_tokenizer)) * 5, [1], generated))
            assert len(generated) < 200
        assert sampler.mask.finished
        text = llama_tokenizer.decode(generated[:-1])
        assert valid(text), text
