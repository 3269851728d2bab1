"""Structured outputs on both engines, through HTTP with the official openai client: OpenAI's
response_format (json_object, json_schema with `parse`) and vLLM's structured_outputs (regex,
choice, grammar), whole and streamed, with n > 1; a constraint that does not compile is a 400
naming its field, and the engine goes on serving. The tiny models are random: the constraint
alone makes their output valid."""

from __future__ import annotations

import json
import re
from typing import Literal

import openai
import pytest
from pydantic import BaseModel

ENGINES = ["tiny-llama", "tiny-llama-hf"]  # OpenVINO GenAI, transformers
MSG = [{"role": "user", "content": "Describe the weather."}]
MOST = 200  # tokens: the random models write JSON's optional whitespace freely


class Weather(BaseModel):
    sky: Literal["sunny", "cloudy", "rainy"]
    windy: bool


@pytest.mark.parametrize("model", ENGINES)
def test_parse_returns_the_pydantic_object(server, model):
    client = server.openai()
    for seed in range(3):
        completion = client.chat.completions.parse(model=model, messages=MSG, response_format=Weather,
                                                   max_completion_tokens=MOST, temperature=1.0, seed=seed)
        parsed = completion.choices[0].message.parsed
        assert isinstance(parsed, Weather) and completion.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("model", ENGINES)
def test_a_streamed_json_object_with_two_choices(server, model):
    texts = ["", ""]
    for chunk in server.openai().chat.completions.create(
            model=model, messages=MSG, response_format={"type": "json_object"}, n=2, stream=True, seed=0,
            max_tokens=MOST):
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert all(isinstance(json.loads(text), dict) for text in texts), texts


@pytest.mark.parametrize("model", ENGINES)
def test_vllm_structured_outputs_regex_choice_and_grammar(server, model):
    client = server.openai()
    regex = client.completions.create(model=model, prompt="Code:", max_tokens=40, n=2, seed=5,
                                      extra_body={"structured_outputs": {"regex": "[0-9]{3}-[a-c]{2,4}"}})
    assert all(re.fullmatch("[0-9]{3}-[a-c]{2,4}", choice.text) for choice in regex.choices), regex.choices
    chosen = client.chat.completions.create(model=model, messages=MSG, max_tokens=20, temperature=1.5, seed=6,
                                            extra_body={"structured_outputs": {"choice": ["yes", "no", "maybe \"so\""]}})
    assert chosen.choices[0].message.content in ("yes", "no", 'maybe "so"')
    grammar = client.completions.create(model=model, prompt="Count:", max_tokens=40, seed=7,
                                        extra_body={"structured_outputs": {"grammar": 'root ::= ("one" | "two") " " [0-9]'}})
    assert re.fullmatch("(one|two) [0-9]", grammar.choices[0].text), grammar.choices[0].text


@pytest.mark.parametrize("model", ENGINES)
@pytest.mark.parametrize("fields,param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": 5}}}}, "response_format"),
    ({"extra_body": {"structured_outputs": {"regex": "a(b"}}}, "structured_outputs"),
    ({"extra_body": {"structured_outputs": {"grammar": "root ::= undefined_rule"}}}, "structured_outputs"),
])
def test_a_constraint_that_does_not_compile_is_a_400_and_the_engine_serves_on(server, model, fields, param):
    client = server.openai()
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model=model, messages=MSG, max_tokens=4, **fields)
    assert error.value.status_code == 400 and error.value.body["param"] == param
    assert "does not compile" in error.value.body["message"]
    after = client.chat.completions.create(model=model, messages=MSG, max_tokens=4, temperature=0)
    assert after.choices[0].message.content is not None


def test_the_models_list_says_what_each_engine_supports(server):
    with server.http() as http:
        cards = {card["id"]: card for card in http.get("/v1/models").json()["data"]}
    assert cards["tiny-llama"]["capabilities"] == {"structured_outputs": True, "logit_bias": False, "logprobs": True, "top_logprobs": 0,
                                                   "tool_parser": None, "reasoning_parser": None}
    assert cards["tiny-llama-hf"]["capabilities"]["structured_outputs"] is True
    assert cards["tiny-llama-hf"]["capabilities"]["logit_bias"] is True
    assert cards["tiny-bert"]["capabilities"] is None
