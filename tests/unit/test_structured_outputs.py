"""Structured outputs: the request forms OpenAI and vLLM use, each reduced to one constraint
with the field it came in, and the replica's check that it compiles (a 400 naming that field)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from contract.errors import InvalidRequestError
from contract.protocol import ChatCompletionRequest, CompletionRequest
from contract.structured_outputs import Constraint
from deployments import grammars

MSG = [{"role": "user", "content": "hi"}]
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


def _chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, **fields})


@pytest.mark.parametrize("fields,constraint,param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": SCHEMA, "strict": True}}},
     Constraint("json_schema", json.dumps(SCHEMA)), "response_format"),
    ({"response_format": {"type": "json_object"}}, Constraint("json_schema", '{"type": "object"}'), "response_format"),
    ({"response_format": {"type": "text"}}, None, None),
    ({"structured_outputs": {"json": SCHEMA}}, Constraint("json_schema", json.dumps(SCHEMA)), "structured_outputs"),
    ({"structured_outputs": {"json": json.dumps(SCHEMA)}}, Constraint("json_schema", json.dumps(SCHEMA)),
     "structured_outputs"),
    ({"structured_outputs": {"regex": "[a-z]+"}}, Constraint("regex", "[a-z]+"), "structured_outputs"),
    ({"structured_outputs": {"choice": ["yes", 'say "no"']}}, Constraint("grammar", 'root ::= "yes" | "say \\"no\\""'),
     "structured_outputs"),
    ({"structured_outputs": {"grammar": 'root ::= "x"'}}, Constraint("grammar", 'root ::= "x"'), "structured_outputs"),
    ({}, None, None),
])
def test_each_form_becomes_one_constraint_with_its_field(fields, constraint, param):
    found = _chat(**fields).constraint()
    assert found == ((constraint, param) if constraint else None)
    if "structured_outputs" in fields:  # completions take vLLM's form too
        assert CompletionRequest.model_validate({"model": "m", "prompt": "x", **fields}).constraint() == found


@pytest.mark.parametrize("fields,param", [
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"response_format": {"type": "text", "json_schema": {"name": "r"}}}, "response_format"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "bad name!", "schema": {}}}}, "response_format"),
    ({"structured_outputs": {}}, "structured_outputs"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs"),
    ({"structured_outputs": {"guided_json": {}}}, "structured_outputs"),
    ({"structured_outputs": {"regex": "a"}, "response_format": {"type": "json_object"}}, "response_format"),
])
def test_malformed_requests_fail_on_their_field(fields, param):
    with pytest.raises(ValidationError) as error:
        _chat(**fields)
    assert error.value.errors()[0]["loc"][0] == param


@pytest.mark.parametrize("constraint,words", [
    (Constraint("json_schema", '{"type": 5}'), "JSON schema does not compile"),
    (Constraint("json_schema", "not json"), "JSON schema does not compile"),
    (Constraint("regex", "a(b"), "regex does not compile"),
    (Constraint("grammar", "root ::= missing"), "grammar does not compile"),
])
def test_a_constraint_that_does_not_compile_is_a_400_naming_the_field(constraint, words):
    with pytest.raises(InvalidRequestError) as error:
        grammars.check(constraint, "structured_outputs")
    assert error.value.param == "structured_outputs" and words in error.value.message
    assert error.value.code == "invalid_structured_output"


def test_a_good_constraint_passes_and_is_checked_once():
    constraint = Constraint("json_schema", json.dumps(SCHEMA))
    grammars._problem.cache_clear()
    grammars.check(constraint, "response_format")
    grammars.check(constraint, "response_format")
    assert grammars._problem.cache_info().hits == 1
