"""Tool calling and reasoning through HTTP, with the official openai client and with LangChain:
a named or required tool_choice forced through structured output on both engines (the tiny
random models return valid calls only because of it), streamed calls the client assembles, a
tool round trip, and the parsers (hermes tool calls, qwen3 reasoning) on tiny-llama-hf, fed
output that a structured output makes."""

from __future__ import annotations

import json
from typing import Literal

import pytest
from pydantic import BaseModel

ENGINES = ["tiny-llama", "tiny-llama-hf"]  # OpenVINO GenAI, transformers
MSG = [{"role": "user", "content": "What is the weather in Paris?"}]
MOST = 200  # tokens: the random models write JSON's optional whitespace freely
WEATHER = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]},
                                            "days": {"type": "integer", "minimum": 1, "maximum": 7}},
           "required": ["city", "days"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather forecast", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "parameters": {
             "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"],
             "additionalProperties": False}}}]


def valid_weather(arguments: str) -> bool:
    args = json.loads(arguments)
    return set(args) == {"city", "days"} and args["city"] in ("Paris", "Rome") and 1 <= args["days"] <= 7


def assemble(stream) -> tuple[dict[int, dict], str | None, str]:
    """Tool calls from stream deltas, as a client assembles them: by index, name once, arguments appended."""
    calls: dict[int, dict] = {}
    finish, content = None, ""
    for chunk in stream:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for part in choice.delta.tool_calls or []:
                call = calls.setdefault(part.index, {"id": None, "name": "", "arguments": ""})
                call["id"] = call["id"] or part.id
                call["name"] += (part.function.name or "") if part.function else ""
                call["arguments"] += (part.function.arguments or "") if part.function else ""
            finish = choice.finish_reason or finish
    return calls, finish, content


@pytest.mark.parametrize("model", ENGINES)
def test_a_named_tool_choice_returns_its_call_whole_and_streamed(server, model):
    client = server.openai()
    named = {"type": "function", "function": {"name": "get_weather"}}
    whole = client.chat.completions.create(model=model, messages=MSG, tools=TOOLS, tool_choice=named, seed=1,
                                           temperature=1.0, max_tokens=MOST)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function" and call.function.name == "get_weather"
    assert valid_weather(call.function.arguments)
    calls, finish, content = assemble(client.chat.completions.create(
        model=model, messages=MSG, tools=TOOLS, tool_choice=named, seed=2, temperature=1.0, max_tokens=MOST, stream=True))
    assert finish == "tool_calls" and content == "" and list(calls) == [0]
    assert calls[0]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    assert valid_weather(calls[0]["arguments"])


@pytest.mark.parametrize("model", ENGINES)
def test_required_picks_one_of_the_tools_and_no_more_than_parallel_calls_allow(server, model):
    client = server.openai()
    for seed in range(2):
        response = client.chat.completions.create(model=model, messages=MSG, tools=TOOLS, tool_choice="required",
                                                  parallel_tool_calls=False, seed=seed, max_tokens=MOST)
        choice = response.choices[0]
        assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
        call = choice.message.tool_calls[0].function
        if call.name == "get_weather":
            assert valid_weather(call.arguments)
        else:
            assert call.name == "get_time" and json.loads(call.arguments)["zone"] in ("UTC", "CET")


@pytest.mark.parametrize("model", ENGINES)
def test_a_tool_round_trip(server, model):
    client = server.openai()
    first = client.chat.completions.create(model=model, messages=MSG, tools=TOOLS, seed=3, max_tokens=MOST,
                                           tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = first.choices[0].message.tool_calls[0]
    messages = [*MSG, first.choices[0].message,  # as the client gave it: refusal, audio, ... as null
                {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"}]
    answer = client.chat.completions.create(model=model, messages=messages, tools=TOOLS, tool_choice="none",
                                            max_tokens=8, temperature=0)
    assert answer.choices[0].message.content and answer.choices[0].message.tool_calls is None
    assert answer.usage.prompt_tokens > first.usage.prompt_tokens  # the call and its result reached the prompt


HERMES = r'<tool_call>\n\{"name": "get_weather", "arguments": \{"city": "(Paris|Rome)", "days": [1-7]\}\}\n</tool_call>'


def test_auto_tool_choice_reads_the_calls_the_model_writes(server):
    # The hermes parser on tiny-llama-hf, fed a call in its format that a regex makes the model write.
    client = server.openai()
    fields = dict(model="tiny-llama-hf", messages=MSG, tools=TOOLS, max_tokens=MOST, seed=4,
                  extra_body={"structured_outputs": {"regex": "Checking\\. " + HERMES}})
    choice = client.chat.completions.create(**fields).choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content.strip() == "Checking."
    assert choice.message.tool_calls[0].function.name == "get_weather"
    assert valid_weather(choice.message.tool_calls[0].function.arguments)
    calls, finish, content = assemble(client.chat.completions.create(**fields, stream=True))
    assert finish == "tool_calls" and content.strip() == "Checking."
    assert calls[0]["arguments"] == choice.message.tool_calls[0].function.arguments  # same seed, same call


def test_reasoning_goes_to_reasoning_content_whole_and_streamed(server):
    client = server.openai()
    fields = dict(model="tiny-llama-hf", messages=MSG, max_tokens=MOST, seed=5,
                  extra_body={"structured_outputs": {"regex": "<think>[a-z]{1,12}</think>[A-Z][a-z]{1,12}"}})
    message = client.chat.completions.create(**fields).choices[0].message
    assert message.model_extra["reasoning_content"].isalpha() and message.content[0].isupper()
    reasoning, content = "", ""
    for chunk in client.chat.completions.create(**fields, stream=True):
        for choice in chunk.choices:
            reasoning += (choice.delta.model_extra or {}).get("reasoning_content") or ""
            content += choice.delta.content or ""
    assert (reasoning, content) == (message.model_extra["reasoning_content"], message.content)


def test_the_models_list_names_the_parsers(server):
    with server.http() as http:
        cards = {card["id"]: card["capabilities"] for card in http.get("/v1/models").json()["data"]}
    assert (cards["tiny-llama-hf"]["tool_parser"], cards["tiny-llama-hf"]["reasoning_parser"]) == ("hermes", "qwen3")
    # The test template has no tool-call format: `auto` finds no parser.
    assert (cards["tiny-llama"]["tool_parser"], cards["tiny-llama"]["reasoning_parser"]) == (None, None)


# ----------------------------------------------------------------------------- LangChain


class Forecast(BaseModel):
    city: Literal["Paris", "Rome"]
    sunny: bool


def langchain_model(server, model: str):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(model=model, base_url=f"{server.base_url}/v1", api_key=server.admin_key, max_tokens=MOST,
                      temperature=1.0, seed=6, max_retries=0)


@pytest.mark.parametrize("model", ENGINES)
def test_langchain_structured_output_and_an_agent_step(server, model):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool

    llm = langchain_model(server, model)
    forecast = llm.with_structured_output(Forecast).invoke("Forecast for Paris?")
    assert isinstance(forecast, Forecast)

    @tool
    def get_weather(city: Literal["Paris", "Rome"], days: int) -> str:
        """Weather forecast for a city."""
        return f"{city}: sunny for {days} days"

    messages = [HumanMessage("What is the weather in Paris?")]
    asked = llm.bind_tools([get_weather], tool_choice="required", parallel_tool_calls=False).invoke(messages)
    (call,) = asked.tool_calls
    assert call["name"] == "get_weather" and call["args"]["city"] in ("Paris", "Rome")
    messages += [asked, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])]
    answer = llm.invoke(messages)  # the tool's result goes back; the model answers in text
    assert isinstance(answer.content, str) and answer.content and not answer.tool_calls
