"""Tool calling without Ray: the request rules (each a 400 naming its field), tool_choice's
grammar, messages as templates take them, one choice's output whole and streamed, and the
gateway's bookkeeping of a streamed call (what the cache stores and replays)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import xgrammar as xgr
from pydantic import ValidationError

from contract.errors import InvalidRequestError
from contract.protocol import ChatCompletionChunk, ChatCompletionRequest, ChatDelta
from contract.tool_calling import tool_choice_constraint
from deployments.chat_output import ChoiceOutput
from deployments.chat_tools import ToolMode, template_messages, template_tools, tool_mode
from serve_app.ingress.gateway.cache_keys import canonical_key
from serve_app.ingress.gateway.generation import CHAT_SPEC, StreamTotals

MSG = [{"role": "user", "content": "Weather in Paris?"}]
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
           "required": ["city"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "now", "description": "the time"}}]
ENGINE = SimpleNamespace(supports_structured_output=True, why_unstructured="", name="transformers")


def chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, **fields})


def refused(fields: dict) -> ValidationError:
    with pytest.raises(ValidationError) as error:
        chat(**fields)
    return error.value


@pytest.mark.parametrize("fields,loc", [
    ({"tool_choice": "required"}, ("tool_choice",)),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, ("response_format",)),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "now"}},
      "structured_outputs": {"regex": "a"}}, ("tool_choice",)),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, ("tools", 0, "function", "name")),
    ({"tools": []}, ("tools",)),
    ({"messages": [{"role": "tool", "content": "42"}]}, ("messages", 0)),
    ({"messages": [{"role": "user", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}],
                    "content": "x"}]}, ("messages", 0)),
    ({"messages": [{"role": "assistant"}]}, ("messages", 0)),
])
def test_tool_fields_that_do_not_fit_fail_on_their_field(fields, loc):
    assert refused(fields).errors()[0]["loc"] == loc


def test_a_tool_round_trip_is_a_valid_conversation():
    request = chat(messages=[
        *MSG, {"role": "assistant", "content": None,
               "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"}], tools=TOOLS)
    with_calls = template_messages(request, "{{ tool_calls }}")
    assert with_calls[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert with_calls[2] == {"role": "tool", "content": "sunny", "tool_call_id": "c1"}
    # A template that cannot render calls sees them in the content, as `required` writes them.
    plain = template_messages(request, "{{ message.content }}")
    assert json.loads(plain[1]["content"]) == [{"name": "get_weather", "parameters": {"city": "Paris"}}]
    assert template_tools(request)[1] == {"type": "function", "function": {"name": "now", "description": "the time"}}
    assert template_tools(chat(tools=TOOLS, tool_choice="none")) is None


def test_named_and_required_tool_choice_become_grammars_the_calls_follow():
    request = chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    constraint, param = request.constraint()
    assert (json.loads(constraint.spec), param) == (WEATHER, "tools")
    required = tool_choice_constraint(chat(tools=TOOLS).tools, "required", parallel=False)
    array = json.loads(required.spec)
    assert array["minItems"] == 1 and array["maxItems"] == 1
    assert [item["properties"]["name"]["const"] for item in array["items"]["anyOf"]] == ["get_weather", "now"]
    grammar = xgr.Grammar.from_json_schema(required.spec)
    assert grammar is not None
    assert tool_choice_constraint(chat(tools=TOOLS).tools, "auto", None) is None
    # A name that is not among the tools makes no grammar: the replica refuses it (below).
    assert chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}).constraint() is None


@pytest.mark.parametrize("fields,param,code", [
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "invalid_request_error"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}], "tool_choice": "required"},
     "tools", "invalid_structured_output"),
    ({"tools": TOOLS}, "tool_choice", "unsupported_parameter"),  # auto, and the model has no tool parser
])
def test_the_replica_refuses_what_no_schema_can_state(fields, param, code):
    with pytest.raises(InvalidRequestError) as error:
        tool_mode(chat(**fields), ENGINE, "m", parser=None)
    assert error.value.param == param and code in (error.value.code, "invalid_request_error")


def test_forced_tool_choice_needs_an_engine_with_structured_output():
    engine = SimpleNamespace(supports_structured_output=False, why_unstructured="no tokenizer.", name="openvino")
    with pytest.raises(InvalidRequestError) as error:
        tool_mode(chat(tools=TOOLS, tool_choice="required"), engine, "m", parser=None)
    assert error.value.param == "tool_choice" and "no tokenizer." in error.value.message
    assert tool_mode(chat(tools=TOOLS), engine, "m", parser="hermes") == ToolMode("parsed", parser="hermes")


def streamed(output: ChoiceOutput, text: str, pieces: list[int], finish: str = "stop") -> tuple[list[ChatDelta], str]:
    deltas, start = [], 0
    for end in [*pieces, len(text)]:
        if (delta := output.feed(text[start:end])) is not None:
            deltas.append(delta)
        start = end
    last, reason = output.finish(finish)
    return deltas + ([last] if last else []), reason


def assembled(deltas: list[ChatDelta], reason: str):
    """The gateway's view of those deltas: what it caches, and replays."""
    totals = StreamTotals()
    for delta in deltas:
        chunk = ChatCompletionChunk(id="c", created=0, model="m", choices=[{"index": 0, "delta": delta}])
        for choice in chunk.choices:
            totals.texts[0] = totals.texts.get(0, "") + (choice.delta.content or "")
            CHAT_SPEC.absorb(choice, totals)
    totals.finishes[0] = reason
    return CHAT_SPEC.assemble("m", totals).choices[0]


REQUIRED = '[{"name": "get_weather", "parameters": {"city": "Paris", "days": 2}}, {"name": "now", "parameters": {}}]'


@pytest.mark.parametrize("cut", range(0, len(REQUIRED), 7))
def test_required_calls_whole_and_streamed_at_any_cut(cut):
    message, reason = ChoiceOutput(ToolMode("required")).message(REQUIRED, "stop")
    assert reason == "tool_calls" and message.content is None
    assert [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] == [
        ("get_weather", {"city": "Paris", "days": 2}), ("now", {})]
    deltas, reason = streamed(ChoiceOutput(ToolMode("required")), REQUIRED, [cut])
    choice = assembled(deltas, reason)
    assert [call.index for d in deltas for call in d.tool_calls if call.id] == [0, 1]  # each opens once
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert [(c.function.name, c.function.arguments) for c in choice.message.tool_calls] == [
        (c.function.name, c.function.arguments) for c in message.tool_calls]
    assert all(c.id.startswith("call_") for c in choice.message.tool_calls)


def test_required_calls_stream_their_arguments_as_they_come():
    cut = REQUIRED.index("Paris")
    deltas, reason = streamed(ChoiceOutput(ToolMode("required")), REQUIRED, [cut, cut + 3])
    first = [call for d in deltas for call in d.tool_calls if call.index == 0]
    assert first[0].function.name == "get_weather" and len(first) == 4  # the name, then three pieces
    assert "".join(c.function.arguments for c in first) == '{"city": "Paris", "days": 2}'
    # Written in another key order (no grammar forces this one), a call still comes out whole.
    other = '[{"parameters": {"city": "Rome"}, "name": "get_weather"}]'
    message, _ = ChoiceOutput(ToolMode("required")).message(other, "stop")
    assert json.loads(message.tool_calls[0].function.arguments) == {"city": "Rome"}
    # Cut short: the complete call is kept, the cut one left out.
    message, reason = ChoiceOutput(ToolMode("required")).message(REQUIRED[:-20], "length")
    assert [c.function.name for c in message.tool_calls] == ["get_weather"] and reason == "length"


def test_a_named_call_streams_its_arguments_as_they_come():
    arguments = '{"city": "Paris"}'
    deltas, reason = streamed(ChoiceOutput(ToolMode("named", name="get_weather")), arguments, [3, 9])
    first = deltas[0].tool_calls[0]
    assert (first.index, first.type, first.function.name, first.function.arguments) == (0, "function", "get_weather", '{"c')
    assert all(d.tool_calls[0].id is None and d.tool_calls[0].function.name is None for d in deltas[1:])
    assert reason == "tool_calls"
    assert assembled(deltas, reason).message.tool_calls[0].function.arguments == arguments
    message, _ = ChoiceOutput(ToolMode("named", name="get_weather")).message(arguments, "stop")
    assert message.tool_calls[0].function.name == "get_weather" and message.content is None
    cut, reason = ChoiceOutput(ToolMode("named", name="get_weather")).message('{"ci', "length")
    assert reason == "length"  # cut short: no claim that the call is complete


def test_parsed_calls_and_text_around_them():
    text = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    message, reason = ChoiceOutput(ToolMode("parsed", parser="hermes")).message(text, "stop")
    assert reason == "tool_calls" and message.content.strip() == "Let me check."
    assert json.loads(message.tool_calls[0].function.arguments) == {"city": "Paris"}
    for cut in range(len(text)):
        deltas, reason = streamed(ChoiceOutput(ToolMode("parsed", parser="hermes")), text, [cut])
        choice = assembled(deltas, reason)
        assert choice.message.content.strip() == "Let me check." and reason == "tool_calls"
        assert json.loads(choice.message.tool_calls[0].function.arguments) == {"city": "Paris"}
    plain, reason = ChoiceOutput(ToolMode("parsed", parser="hermes")).message("Just text.", "stop")
    assert (plain.content, plain.tool_calls, reason) == ("Just text.", None, "stop")


def test_reasoning_goes_to_its_own_field_whole_and_streamed():
    text = "<think>It is cold.</think>Wear a coat."
    message, _ = ChoiceOutput(ToolMode(), reasoning_parser="qwen3").message(text, "stop")
    assert (message.reasoning_content, message.content) == ("It is cold.", "Wear a coat.")
    deltas, reason = streamed(ChoiceOutput(ToolMode(), reasoning_parser="qwen3"), text, [3, 12, 20])
    choice = assembled(deltas, reason)
    assert (choice.message.reasoning_content, choice.message.content) == ("It is cold.", "Wear a coat.")


def test_a_cached_call_replays_as_a_stream_the_client_assembles_to_the_same_call():
    message, reason = ChoiceOutput(ToolMode("required")).message(REQUIRED, "stop")
    stored = CHAT_SPEC.assemble("m", StreamTotals(texts={0: ""}, finishes={0: reason},
                                                  tool_calls={0: dict(enumerate(message.tool_calls))}))
    replay = list(CHAT_SPEC.replay(stored, SimpleNamespace(continuous_usage_stats=False, include_usage=False)))
    deltas = [choice.delta for chunk in replay for choice in chunk.choices]
    again = assembled(deltas, replay[-1].choices[0].finish_reason)
    assert again.message.tool_calls == message.tool_calls and again.finish_reason == "tool_calls"


@pytest.mark.parametrize("change", [
    {"response_format": {"type": "json_object"}},
    {"tools": TOOLS, "tool_choice": "required"},
    {"tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False},
])
def test_formats_and_tools_are_part_of_the_cache_key(change):
    base = chat(temperature=0).model_dump()
    other = chat(temperature=0, **change).model_dump()
    if "parallel_tool_calls" in change:
        base = chat(temperature=0, tools=TOOLS, tool_choice="required").model_dump()
    assert canonical_key("chat", base, "r", "k") != canonical_key("chat", other, "r", "k")
