"""Log-probabilities as a client sees them: which requests are accepted (chat's logprobs and
top_logprobs, completions' logprobs), which an engine refuses with a 400 naming the field, and
the OpenAI objects built from the generated tokens (tokens that spell the text, text offsets)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from contract.errors import InvalidRequestError
from contract.protocol import ChatCompletionRequest, CompletionRequest
from deployments.logprob_entries import CompletionOffsets, chat_logprobs, completion_logprobs
from deployments.sampling import check_request_fields, sampling_params
from deployments.text_stream import TokenEntry

MESSAGES = [{"role": "user", "content": "hi"}]
TRANSFORMERS = SimpleNamespace(name="transformers", max_top_logprobs=20, supports_logit_bias=True,
                               supports_structured_output=True)
OPENVINO = SimpleNamespace(name="openvino_genai", max_top_logprobs=0, supports_logit_bias=False,
                           supports_structured_output=True)


def _chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": MESSAGES, **fields})


def _completion(**fields) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "m", "prompt": "hi", **fields})


def _asked(request) -> int | None:
    return sampling_params(request, 3, "prompt", 0, max_model_len=64, default_max_tokens=8).logprobs


def test_what_each_request_asks_the_engine_for():
    assert _asked(_chat()) is None and _asked(_chat(logprobs=False)) is None
    assert _asked(_chat(logprobs=True)) == 0
    assert _asked(_chat(logprobs=True, top_logprobs=5)) == 5
    assert _asked(_completion()) is None
    assert _asked(_completion(logprobs=0)) == 0 and _asked(_completion(logprobs=3)) == 3


@pytest.mark.parametrize("make,fields,param", [
    (_chat, {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    (_chat, {"top_logprobs": 2}, "top_logprobs"),  # alternatives need logprobs true
    (_chat, {"logprobs": False, "top_logprobs": 0}, "top_logprobs"),
    (_chat, {"logprobs": 1}, "logprobs"),
    (_completion, {"logprobs": 21}, "logprobs"),
    (_completion, {"logprobs": -1}, "logprobs"),
    (_completion, {"logprobs": True}, "logprobs"),
])
def test_out_of_range_fields_fail_on_their_name(make, fields, param):
    with pytest.raises(ValidationError) as caught:
        make(**fields)
    assert caught.value.errors()[0]["loc"] == (param,)


@pytest.mark.parametrize("request_,param", [
    (_chat(logprobs=True, top_logprobs=1), "top_logprobs"),
    (_completion(logprobs=2), "logprobs"),
])
def test_an_engine_without_alternatives_refuses_them_naming_the_field(request_, param):
    check_request_fields(request_, TRANSFORMERS, "m", vocab_size=100)
    with pytest.raises(InvalidRequestError) as caught:
        check_request_fields(request_, OPENVINO, "m", vocab_size=100)
    assert (caught.value.param, caught.value.code) == (param, "unsupported_parameter")
    assert "openvino_genai" in caught.value.message


def test_every_engine_gives_the_sampled_tokens_own():
    for engine in (TRANSFORMERS, OPENVINO):
        check_request_fields(_chat(logprobs=True, top_logprobs=0), engine, "m", vocab_size=100)
        check_request_fields(_completion(logprobs=0), engine, "m", vocab_size=100)


def test_echo_with_logprobs_is_refused_naming_echo():
    check_request_fields(_completion(echo=True), TRANSFORMERS, "m", vocab_size=100)
    with pytest.raises(InvalidRequestError) as caught:
        check_request_fields(_completion(echo=True, logprobs=0), TRANSFORMERS, "m", vocab_size=100)
    assert caught.value.param == "echo"


ENTRIES = (
    TokenEntry(5, "Hé", -0.25, (("Hé", -0.25), ("Ho", -1.5))),
    TokenEntry(6, "", -0.5, (("x", -0.1), ("", -0.5))),
    TokenEntry(7, " ok", float("-inf"), ()),
)


def test_chat_entries_are_openais():
    built = json.loads(chat_logprobs(ENTRIES).model_dump_json())
    assert built["refusal"] is None
    first, second, third = built["content"]
    assert first == {"token": "Hé", "logprob": -0.25, "bytes": [72, 195, 169],
                     "top_logprobs": [{"token": "Hé", "logprob": -0.25, "bytes": [72, 195, 169]},
                                      {"token": "Ho", "logprob": -1.5, "bytes": [72, 111]}]}
    assert second["token"] == "" and second["bytes"] == []
    assert third["logprob"] == -9999.0 and third["top_logprobs"] == []  # -inf has no JSON form
    assert "".join(entry["token"] for entry in built["content"]) == "Hé ok"
    assert chat_logprobs(None) is None


def test_completion_lists_give_each_tokens_offset_and_its_own_logprob_first():
    built = completion_logprobs(ENTRIES)
    assert built.tokens == ["Hé", "", " ok"]
    assert built.text_offset == [0, 2, 2]
    assert built.token_logprobs == [-0.25, -0.5, -9999.0]
    assert [list(top) for top in built.top_logprobs] == [["Hé", "Ho"], ["", "x"], [" ok"]]
    assert built.top_logprobs[1] == {"": -0.5, "x": -0.1}


def test_a_streams_offsets_go_on_from_chunk_to_chunk_per_choice():
    offsets = CompletionOffsets()
    assert offsets.logprobs(0, ENTRIES[:1]).text_offset == [0]
    assert offsets.logprobs(1, ENTRIES[:1]).text_offset == [0]  # another choice, its own text
    assert offsets.logprobs(0, ENTRIES[1:]).text_offset == [2, 2]
    assert offsets.logprobs(0, None) is None
