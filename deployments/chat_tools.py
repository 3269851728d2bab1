"""A chat request's tools on the replica: which way its output becomes tool calls, the checks
no schema can state (a named tool that exists, tool schemas that compile, an engine that can
force them, a parser for `auto`), and messages as the model's chat template takes them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from contract.engine import GenerationEngine
from contract.errors import InvalidRequestError
from contract.protocol import ChatCompletionRequest
from contract.structured_outputs import Constraint
from contract.tool_calling import NamedToolChoice

from . import grammars
from .tool_parsers import tool_parser_for_template


@dataclass(frozen=True)
class ToolMode:
    """How one request's output becomes tool calls: not at all (text), a named function's
    arguments, a forced JSON array of calls (required), or what a tool parser finds (parsed)."""

    kind: Literal["text", "named", "required", "parsed"] = "text"
    name: str | None = None  # named: the function
    parser: str | None = None  # parsed: the tool parser


def resolve_tool_parser(setting: str | None, chat_template: str | None) -> str | None:
    """The model's tool parser: the one configured, or for `auto` the chat template's."""
    return tool_parser_for_template(chat_template) if setting == "auto" else setting


def tool_mode(request: ChatCompletionRequest, engine: GenerationEngine, model_id: str, parser: str | None) -> ToolMode:
    """The request's ToolMode, or a 400 naming the field that cannot be honoured."""
    choice = request.tool_choice
    if not request.tools or choice == "none":
        return ToolMode()
    forced = choice == "required" or isinstance(choice, NamedToolChoice)
    if engine.supports_structured_output:
        for tool in request.tools:  # each is a JSON schema the model's calls are held to
            schema = tool.function.parameters or {"type": "object"}
            grammars.check(Constraint("json_schema", json.dumps(schema)), "tools")
    elif forced:
        raise InvalidRequestError(
            f"tool_choice {_described(choice)} is forced through structured output, which model '{model_id}' "
            f"does not support: {engine.why_unstructured}", param="tool_choice", code="unsupported_parameter")
    if isinstance(choice, NamedToolChoice):
        names = [tool.function.name for tool in request.tools]
        if choice.function.name not in names:
            raise InvalidRequestError(
                f"tool_choice names function '{choice.function.name}', which is not among the tools: {names}.",
                param="tool_choice")
        return ToolMode("named", name=choice.function.name)
    if choice == "required":
        return ToolMode("required")
    if parser is None:
        raise InvalidRequestError(
            f"Model '{model_id}' cannot choose tools itself (tool_choice 'auto', the default with tools): its chat "
            "template has no tool-call format and no tool_parser is set. Use tool_choice 'required' or a named "
            "function, which structured output enforces.", param="tool_choice", code="unsupported_parameter")
    return ToolMode("parsed", parser=parser)


def _described(choice: Any) -> str:
    return f"'{choice.function.name}'" if isinstance(choice, NamedToolChoice) else f"'{choice}'"


def template_messages(request: ChatCompletionRequest, chat_template: str) -> list[dict[str, Any]]:
    """The messages as chat templates take them (transformers' convention). A template that
    does not render tool calls gets them written into the assistant's content, in the format
    a `required` tool_choice produces, so the model still sees what it called."""
    renders_calls = "tool_calls" in chat_template
    out = []
    for message in request.messages:
        entry: dict[str, Any] = {"role": "system" if message.role == "developer" else message.role,
                                 "content": message.text()}
        if message.tool_calls:
            calls = [{"name": call.function.name, "arguments": _arguments(call.function.arguments)}
                     for call in message.tool_calls]
            if renders_calls:
                entry["tool_calls"] = [{"id": call.id, "type": "function", "function": rendered}
                                       for call, rendered in zip(message.tool_calls, calls, strict=True)]
            else:
                written = json.dumps([{"name": c["name"], "parameters": c["arguments"]} for c in calls], ensure_ascii=False)
                entry["content"] = f"{entry['content']}\n{written}" if entry["content"] else written
        if message.role == "tool":
            entry["tool_call_id"] = message.tool_call_id
        if message.name is not None:
            entry["name"] = message.name
        out.append(entry)
    return out


def template_tools(request: ChatCompletionRequest) -> list[dict[str, Any]] | None:
    """The tools as chat templates take them (none when tool_choice is 'none', as OpenAI's
    model is then not to call any)."""
    if not request.tools or request.tool_choice == "none":
        return None
    return [tool.model_dump(exclude_none=True) for tool in request.tools]


def _arguments(text: str) -> Any:
    # Templates write arguments with `tojson`: give them the object, as transformers expects.
    try:
        return json.loads(text)
    except ValueError:
        return text
