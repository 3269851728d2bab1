"""OpenAI request parsing and response shapes."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from contract.embedding_protocol import EmbeddingRequest
from contract.errors import validation_error_to_api_error
from contract.protocol import (
    NO_EFFECT_FIELDS,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    CompletionRequest,
)
from serve_app.ingress.gateway.cache_keys import canonical_key

MSG = [{"role": "user", "content": "hi"}]


def test_chat_defaults_follow_openai():
    request = ChatCompletionRequest(model="m", messages=MSG)
    assert request.temperature == 1.0
    assert request.top_p == 1.0
    assert request.n == 1
    assert request.stream is False
    assert request.requested_max_tokens is None


def test_max_completion_tokens_wins():
    request = ChatCompletionRequest(model="m", messages=MSG, max_tokens=5, max_completion_tokens=9)
    assert request.requested_max_tokens == 9


def test_stop_is_normalised_to_a_list():
    assert ChatCompletionRequest(model="m", messages=MSG, stop="x").stop == ["x"]
    assert ChatCompletionRequest(model="m", messages=MSG, stop=["a", "b"]).stop == ["a", "b"]
    assert ChatCompletionRequest(model="m", messages=MSG, stop=[]).stop is None


def test_content_parts_join_with_newlines():
    request = ChatCompletionRequest(
        model="m", messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    )
    assert request.messages[0].text() == "a\nb"


@pytest.mark.parametrize("request_type,body", [(ChatCompletionRequest, {"messages": MSG}), (CompletionRequest, {"prompt": "a"})])
def test_a_generation_field_this_server_does_not_know_is_refused_by_name(request_type, body):
    """A field that may change what is sampled is never silently ignored (OpenAI refuses them too)."""
    for field in ("reasoning_effort", "guided_json", "some_future_field"):
        with pytest.raises(ValidationError) as error:
            request_type.model_validate({"model": "m", **body, field: "x"})
        assert [(e["type"], e["loc"]) for e in error.value.errors()] == [("extra_forbidden", (field,))]
        rendered = validation_error_to_api_error(error.value.errors())
        assert rendered.param == field and rendered.code == "unknown_parameter"
        assert rendered.message == f"Unrecognized request argument supplied: {field}"


def test_fields_that_change_nothing_are_accepted_and_kept_out_of_the_cache_key():
    noop = {"user": "u", "metadata": {"a": "b"}, "store": False, "service_tier": "auto", "safety_identifier": "s",
            "prompt_cache_key": "k", "prediction": {"type": "content", "content": "x"}, "priority": 1,
            "request_id": "r", "cache_salt": "c", "modalities": ["text"]}
    assert set(noop) == NO_EFFECT_FIELDS
    plain = ChatCompletionRequest.model_validate({"model": "m", "messages": MSG})
    request = ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, **noop})
    assert canonical_key("chat", request.model_dump(), "r1", "k") == canonical_key("chat", plain.model_dump(), "r1", "k")
    sampled = ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, "top_k": 3})
    assert canonical_key("chat", sampled.model_dump(), "r1", "k") != canonical_key("chat", plain.model_dump(), "r1", "k")
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, "modalities": ["text", "audio"]})


@pytest.mark.parametrize(
    "field,value",
    [("top_k", -2), ("min_p", 1.5), ("repetition_penalty", 0), ("min_tokens", -1), ("stop_token_ids", [-1]),
     ("logit_bias", {"a": 1}), ("logit_bias", {"1": 101}), ("ignore_eos", "yes")],
)
def test_bad_sampling_extras_fail_on_their_own_field(field, value):
    with pytest.raises(ValidationError) as error:
        ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, field: value})
    assert error.value.errors()[0]["loc"][0] == field


@pytest.mark.parametrize("field,value", [("logprobs", 1), ("top_logprobs", 21)])
def test_bad_log_probability_fields_fail_on_their_own_field(field, value):
    with pytest.raises(ValidationError) as error:
        ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, field: value})
    assert error.value.errors()[0]["loc"] == (field,)


def test_assistant_message_without_content_is_rejected():
    with pytest.raises(ValidationError):
        ChatCompletionRequest(model="m", messages=[{"role": "assistant"}])


def test_completion_prompt_forms():
    assert CompletionRequest(model="m", prompt="a").prompts() == ["a"]
    assert CompletionRequest(model="m", prompt=["a", "b"]).prompts() == ["a", "b"]
    assert CompletionRequest(model="m", prompt=[1, 2, 3]).prompts() == [[1, 2, 3]]
    assert CompletionRequest(model="m", prompt=[[1], [2, 3]]).prompts() == [[1], [2, 3]]
    with pytest.raises(ValidationError):
        CompletionRequest(model="m", prompt=[])
    with pytest.raises(ValidationError):
        CompletionRequest(model="m", prompt=[[1], []])


def test_best_of_is_only_1():
    """Picking the best of more candidates is not done here (nor by vLLM's V1 engine): a 400."""
    assert CompletionRequest(model="m", prompt="a", n=2, best_of=1).best_of == 1
    for n, best_of in ((2, 2), (1, 3)):
        with pytest.raises(ValidationError) as error:
            CompletionRequest(model="m", prompt="a", n=n, best_of=best_of)
        assert error.value.errors()[0]["loc"] == ("best_of",)


def test_embedding_input_forms():
    assert EmbeddingRequest(model="m", input="a").inputs() == ["a"]
    assert EmbeddingRequest(model="m", input=["a", "b"]).inputs() == ["a", "b"]
    assert EmbeddingRequest(model="m", input=[5, 6]).inputs() == [[5, 6]]
    assert EmbeddingRequest(model="m", input=[[5], [6, 7]]).inputs() == [[5], [6, 7]]
    for bad in ["", [""], ["a", ""], [], [[]]]:
        with pytest.raises(ValidationError):
            EmbeddingRequest(model="m", input=bad)


def test_chunk_delta_omits_unset_keys():
    chunk = ChatCompletionChunk(id="c", created=1, model="m", choices=[ChatChunkChoice(index=0, delta=ChatDelta(content="x"))])
    assert '"delta":{"content":"x"}' in chunk.model_dump_json()
    end = ChatCompletionChunk(id="c", created=1, model="m", choices=[ChatChunkChoice(index=0, delta=ChatDelta(), finish_reason="stop")])
    assert '"delta":{}' in end.model_dump_json()
