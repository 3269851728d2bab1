"""OpenAI request parsing and response shapes."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from contract.protocol import (
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    CompletionRequest,
    EmbeddingRequest,
)

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


def test_unknown_fields_are_kept_and_reported():
    request = ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, "reasoning_effort": "low"})
    assert request.unknown_fields() == ["reasoning_effort"]


@pytest.mark.parametrize(
    "field,value",
    [("logprobs", True), ("tools", [{"type": "function"}]), ("tool_choice", "auto"), ("logit_bias", {"1": 2})],
)
def test_unsupported_features_fail_on_their_own_field(field, value):
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


def test_best_of_equal_to_n_is_allowed():
    assert CompletionRequest(model="m", prompt="a", n=2, best_of=2).best_of == 2
    with pytest.raises(ValidationError):
        CompletionRequest(model="m", prompt="a", n=1, best_of=3)


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
