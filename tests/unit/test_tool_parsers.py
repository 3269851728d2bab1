"""Tool-call parsers on real model-family outputs (Hermes 2 Pro, Qwen2.5/Qwen3, Llama 3.1/3.2/4):
the calls and the content a client gets, whole and streamed in pieces split at every
character; and which parser `auto` picks from a chat template."""

from __future__ import annotations

import json

import pytest

from deployments.tool_parsers import (
    TOOL_PARSERS,
    ParsedToolCall,
    ToolStreamStep,
    make_tool_parser,
    tool_parser_for_template,
)


def call(name: str, **arguments) -> ParsedToolCall:
    return ParsedToolCall(name, json.dumps(arguments, ensure_ascii=False))


QWEN_TWO_CALLS = (
    "I'll look up both for you.\n"
    "<tool_call>\n"
    '{"name": "get_current_temperature", "arguments": {"location": "San Francisco, CA, USA", "unit": "celsius"}}\n'
    "</tool_call>\n"
    "<tool_call>\n"
    '{"name": "get_temperature_date", "arguments": {"location": "San Francisco, CA, USA", "date": "2024-10-01", '
    '"unit": "celsius"}}\n'
    "</tool_call>"
)
QWEN_TWO_CALLS_EXPECTED = [
    call("get_current_temperature", location="San Francisco, CA, USA", unit="celsius"),
    call("get_temperature_date", location="San Francisco, CA, USA", date="2024-10-01", unit="celsius"),
]
BAD_BLOCK = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"\n</tool_call>'

CASES = [
    # (parser, output, content, calls)
    pytest.param("hermes", '<tool_call>\n{"arguments": {"symbol": "TSLA"}, "name": "get_stock_fundamentals"}\n'
                 "</tool_call>", None, [call("get_stock_fundamentals", symbol="TSLA")], id="hermes-2-pro"),
    pytest.param("hermes", QWEN_TWO_CALLS, "I'll look up both for you.", QWEN_TWO_CALLS_EXPECTED,
                 id="qwen2.5-text-then-two-calls"),
    pytest.param("hermes", "\n\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"München\", "
                 "\"days\": 3, \"hourly\": false, \"fields\": [\"temp\", \"wind\"], \"units\": null}}\n</tool_call>",
                 None, [call("get_weather", city="München", days=3, hourly=False, fields=["temp", "wind"],
                             units=None)], id="qwen3-after-think-non-ascii"),
    pytest.param("hermes", '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>\nChecking the time now.',
                 "Checking the time now.", [call("get_time")], id="hermes-text-after-call"),
    pytest.param("hermes", "<tool_call>\n{'arguments': {'symbol': 'NVDA', 'limit': 5}, 'name': 'get_news'}\n"
                 "</tool_call>", None, [call("get_news", symbol="NVDA", limit=5)], id="hermes-python-dict-quotes"),
    pytest.param("hermes", '<tool_call>\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}\n'
                 "</tool_call>", None, [call("get_weather", city="Oslo")], id="hermes-arguments-as-json-text"),
    pytest.param("hermes", 'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}',
                 "Sure.", [call("get_weather", city="Rome")], id="hermes-unclosed-last-call"),
    pytest.param("hermes", "The answer is 42. Use <b>tags</b> and a < b freely.", "The answer is 42. Use <b>tags</b> "
                 "and a < b freely.", [], id="hermes-plain-text"),
    pytest.param("hermes", "Before\n" + BAD_BLOCK + "\nAfter", "Before\n" + BAD_BLOCK + "\nAfter", [],
                 id="hermes-broken-json-stays-content"),
    pytest.param("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>\n'
                 + BAD_BLOCK, BAD_BLOCK, [call("get_weather", city="Rome")], id="hermes-one-good-one-broken"),
    pytest.param("hermes", '<tool_call>\n{"name": "get_weather", "arguments": [1, 2]}\n</tool_call>',
                 '<tool_call>\n{"name": "get_weather", "arguments": [1, 2]}\n</tool_call>', [],
                 id="hermes-arguments-not-an-object"),
    pytest.param("hermes", "Let me think <tool_ca", "Let me think <tool_ca", [], id="hermes-partial-tag-at-end"),
    pytest.param("hermes", "   \n", None, [], id="hermes-only-whitespace"),
    pytest.param("llama3_json", '<|python_tag|>{"name": "get_current_conditions", "parameters": {"location": '
                 '"San Francisco, CA", "unit": "Fahrenheit"}}', None,
                 [call("get_current_conditions", location="San Francisco, CA", unit="Fahrenheit")],
                 id="llama3.1-python-tag"),
    pytest.param("llama3_json", '{"name": "get_weather", "parameters": {"city": "Paris", "days": 3}}; '
                 '{"name": "get_time", "parameters": {"timezone": "Europe/Paris"}}', None,
                 [call("get_weather", city="Paris", days=3), call("get_time", timezone="Europe/Paris")],
                 id="llama3.2-two-calls"),
    pytest.param("llama3_json", '\n{"type": "function", "name": "search", "arguments": {"query": "ray serve", '
                 '"filters": {"year": 2024, "tags": ["ml", "serving"]}}}', None,
                 [call("search", query="ray serve", filters={"year": 2024, "tags": ["ml", "serving"]})],
                 id="llama3-arguments-key-nested"),
    pytest.param("llama3_json", '<|python_start|>{"name": "get_weather", "parameters": {"city": "Lima"}}'
                 "<|python_end|>", None, [call("get_weather", city="Lima")], id="llama4-python-start"),
    pytest.param("llama3_json", "Paris is the capital of France.", "Paris is the capital of France.", [],
                 id="llama3-plain-text"),
    pytest.param("llama3_json", '{"name": "Alice", "age": 30}', '{"name": "Alice", "age": 30}', [],
                 id="llama3-json-answer-is-not-a-call"),
    pytest.param("llama3_json", '{"name": "get_weather", "parameters": {"city": "Paris"}} and then some text',
                 '{"name": "get_weather", "parameters": {"city": "Paris"}} and then some text', [],
                 id="llama3-trailing-text-is-not-a-call"),
    pytest.param("llama3_json", '<|python_tag|>brave_search.call(query="weather in Menlo Park")',
                 '<|python_tag|>brave_search.call(query="weather in Menlo Park")', [], id="llama3.1-builtin-tool"),
    pytest.param("llama3_json", '{"name": "get_weather", "parameters": {"city": "Par', '{"name": "get_weather", '
                 '"parameters": {"city": "Par', [], id="llama3-truncated"),
    pytest.param("pythonic", '[get_weather(city="San Francisco", metric="celsius"), '
                 'get_time(timezone="America/Los_Angeles")]', None,
                 [call("get_weather", city="San Francisco", metric="celsius"),
                  call("get_time", timezone="America/Los_Angeles")], id="llama3.2-two-calls"),
    pytest.param("pythonic", "[book_flight(origin='PAR', seats=2, price=-12.5, refundable=True, meal=None, "
                 "stops=['LHR', \"JFK\"], extras={'bags': 1, 'notes': \"window\"}), ping()]", None,
                 [call("book_flight", origin="PAR", seats=2, price=-12.5, refundable=True, meal=None,
                       stops=["LHR", "JFK"], extras={"bags": 1, "notes": "window"}), call("ping")],
                 id="pythonic-literal-kinds"),
    pytest.param("pythonic", '<|python_start|>[get_weather(city="Tōkyō", days=3)]<|python_end|>', None,
                 [call("get_weather", city="Tōkyō", days=3)], id="llama4-python-start"),
    pytest.param("pythonic", " [search(query=\"a, b) c\", strict=false, limit=null)]\n", None,
                 [call("search", query="a, b) c", strict=False, limit=None)], id="pythonic-json-spellings"),
    pytest.param("pythonic", "The weather in Paris is sunny.", "The weather in Paris is sunny.", [],
                 id="pythonic-plain-text"),
    pytest.param("pythonic", "[Docs](https://example.com) explain it.", "[Docs](https://example.com) explain it.", [],
                 id="pythonic-markdown-link"),
    pytest.param("pythonic", "[1, 2, 3]", "[1, 2, 3]", [], id="pythonic-plain-list"),
    pytest.param("pythonic", "[]", "[]", [], id="pythonic-empty-list"),
    pytest.param("pythonic", '[get_weather("Paris")]', '[get_weather("Paris")]', [], id="pythonic-positional-arg"),
    pytest.param("pythonic", "[os.system(command='ls')]", "[os.system(command='ls')]", [], id="pythonic-attribute"),
    pytest.param("pythonic", "[run(code=__import__('os').system('ls'))]",
                 "[run(code=__import__('os').system('ls'))]", [], id="pythonic-expression-is-never-evaluated"),
    pytest.param("pythonic", '[get_weather(city="Paris"', '[get_weather(city="Paris"', [], id="pythonic-truncated"),
]


def streamed(name: str, pieces: list[str]) -> tuple[str, list[ParsedToolCall]]:
    parser = make_tool_parser(name)
    steps = [parser.feed(piece) for piece in pieces] + [parser.finish()]
    return "".join(s.content for s in steps), [c for s in steps for c in s.calls]


@pytest.mark.parametrize("name, output, content, calls", CASES)
def test_whole_output(name, output, content, calls):
    assert make_tool_parser(name).parse(output) == (content, calls)


@pytest.mark.parametrize("name, output, content, calls", CASES)
def test_streamed_at_every_split_equals_whole(name, output, content, calls):
    expected = ((content or "").strip(), calls)

    def normalised(result):
        return result[0].strip(), result[1]

    for cut in range(len(output) + 1):
        assert normalised(streamed(name, [output[:cut], output[cut:]])) == expected, cut
    assert normalised(streamed(name, list(output))) == expected


def test_hermes_streams_text_at_once_and_each_call_when_closed():
    parser = make_tool_parser("hermes")
    assert parser.feed("I'll look ") == ToolStreamStep(content="I'll look")
    assert parser.feed("up both for you.\n<tool") == ToolStreamStep(content=" up both for you.")
    assert parser.feed('_call>\n{"name": "get_time", ') == ToolStreamStep()
    assert parser.feed('"arguments": {}}\n</tool_call>\n<tool_call>\n') == ToolStreamStep(calls=(call("get_time"),))
    assert parser.feed('{"name": "ping", "arguments": {}}\n</tool_call>') == ToolStreamStep(calls=(call("ping"),))
    assert parser.finish() == ToolStreamStep()


def test_whole_output_formats_release_plain_text_at_once():
    for name in ("llama3_json", "pythonic"):
        parser = make_tool_parser(name)
        assert parser.feed("\n") == ToolStreamStep()
        assert parser.feed("Sure, ") == ToolStreamStep(content="\nSure,")
        assert parser.feed("[it] {is} here") == ToolStreamStep(content=" [it] {is} here")


def test_call_formats_are_held_until_the_end():
    parser = make_tool_parser("pythonic")
    assert parser.feed('[get_weather(city="Paris")') == ToolStreamStep()
    assert parser.feed("]") == ToolStreamStep()
    assert parser.finish() == ToolStreamStep(calls=(call("get_weather", city="Paris"),))


def test_deeply_nested_pythonic_is_content_not_a_crash():
    output = "[f(x=" + "[" * 5000 + "]" * 5000 + ")]"
    assert make_tool_parser("pythonic").parse(output) == (output, [])


HERMES_TEMPLATE = (  # excerpt of NousResearch/Hermes-2-Pro's tool_use template
    "{{- \"For each function call return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags as follows:\n\" }}{{- \"<tool_call>\n\" }}"
)
QWEN25_TEMPLATE = (  # excerpt of Qwen2.5-Instruct's template
    "{{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}"
)
QWEN3_CODER_TEMPLATE = "{{- '<tool_call>\\n<function=' + tool_call.name + '>\\n' }}"
LLAMA31_TEMPLATE = (  # excerpt of Llama-3.1-Instruct's template
    "{{- \"Environment: ipython\\n\" }}{{- 'Respond in the format {\"name\": function name, \"parameters\": "
    "dictionary of argument name and its value}.' }}{{- \"<|python_tag|>\" + tool_call.name + \".call(\" }}"
)
LLAMA32_JSON_TEMPLATE = (
    "{{- \"Environment: ipython\\n\" }}{{- '{\"name\": \"' + tool_call.name + '\", ' }}{{- '\"parameters\": ' }}"
)
LLAMA32_PYTHONIC_TEMPLATE = (  # excerpt of vLLM's tool_chat_template_llama3.2_pythonic.jinja
    "{{- \"Environment: ipython\\n\" }}{{- 'Respond in the format [func_name1(params_name1=params_value1, "
    "params_name2=params_value2...), func_name2(params)] ' }}"
)
LLAMA4_PYTHONIC_TEMPLATE = "{{- '<|header_start|>assistant<|header_end|>\\n\\n[' }}{{-  tool_call.name + '(' -}}"
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
    "+ '<|im_end|>' + '\\n' }}{% endfor %}"
)


@pytest.mark.parametrize("template, parser", [
    (HERMES_TEMPLATE, "hermes"),
    (QWEN25_TEMPLATE, "hermes"),
    (QWEN3_CODER_TEMPLATE, None),
    (LLAMA31_TEMPLATE, "llama3_json"),
    (LLAMA32_JSON_TEMPLATE, "llama3_json"),
    (LLAMA32_PYTHONIC_TEMPLATE, "pythonic"),
    (LLAMA4_PYTHONIC_TEMPLATE, "pythonic"),
    (CHATML_TEMPLATE, None),
    ("", None),
    (None, None),
])
def test_auto_picks_the_parser_from_the_chat_template(template, parser):
    assert tool_parser_for_template(template) == parser


def test_registry_and_unknown_name():
    assert sorted(TOOL_PARSERS) == ["hermes", "llama3_json", "pythonic"]
    with pytest.raises(ValueError, match="hermes"):
        make_tool_parser("mistral")
