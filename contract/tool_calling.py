"""Tool calling on the wire, as OpenAI's chat API has it: the tools a request offers, its
tool_choice, the calls in a response (whole or as stream deltas), and the constraint that
forces a `required` or named tool_choice through structured output. Whether a tool's schema
compiles, and whether a named tool exists, is the replica's check (400 naming the field)."""

from __future__ import annotations

import json
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer

from .structured_outputs import Constraint

MAX_TOOLS = 128  # OpenAI's limit
FUNCTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class FunctionDefinition(_Strict):
    name: str = Field(..., pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema of the arguments object
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(_Strict):
    name: str = Field(..., pattern=FUNCTION_NAME)


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice

# tool_choice other than "none" needs tools to choose from (OpenAI refuses it otherwise).
TOOL_CHOICE_NEEDS_TOOLS: dict[str, Any] = {
    "if": {"properties": {"tool_choice": {"anyOf": [{"enum": ["auto", "required"]}, {"type": "object"}]}},
           "required": ["tool_choice"]},
    "then": {"properties": {"tools": {"type": "array", "minItems": 1}}, "required": ["tools"]},
}


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)  # clients echo back what they were sent
    name: str
    arguments: str  # JSON text, as the model wrote it


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class _OmitNone(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler):
        # OpenAI sends only the keys a delta carries.
        return {key: value for key, value in handler(self).items() if value is not None}


class FunctionCallDelta(_OmitNone):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(_OmitNone):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta | None = None

    @classmethod
    def opening(cls, index: int, call_id: str, name: str, arguments: str = "") -> ToolCallDelta:
        """A call's first delta: its id and name (and any arguments already known)."""
        return cls(index=index, id=call_id, type="function", function=FunctionCallDelta(name=name, arguments=arguments))


def tool_choice_constraint(tools: list[Tool], choice: ToolChoice | None, parallel: bool | None) -> Constraint | None:
    """The output a `required` or named tool_choice forces, as vLLM forces it: a named function's
    arguments object, or a JSON array of {"name", "parameters"} objects, one per call."""
    if isinstance(choice, NamedToolChoice):
        named = [t for t in tools if t.function.name == choice.function.name]  # none: the replica's 400
        return Constraint("json_schema", json.dumps(_arguments_schema(named[0]))) if named else None
    if choice != "required":
        return None
    calls = {"anyOf": [{"type": "object", "properties": {"name": {"const": tool.function.name},
                                                          "parameters": _arguments_schema(tool)},
                        "required": ["name", "parameters"]} for tool in tools]}
    array: dict[str, Any] = {"type": "array", "minItems": 1, "items": calls}
    if parallel is False:
        array["maxItems"] = 1
    return Constraint("json_schema", json.dumps(array))


def _arguments_schema(tool: Tool) -> dict[str, Any]:
    return tool.function.parameters or {"type": "object", "properties": {}}


# A required or named tool_choice fixes the output, so no other structured output may be asked for.
ONE_FORCED_OUTPUT: dict[str, Any] = {
    "if": {"properties": {"tool_choice": {"anyOf": [{"const": "required"}, {"type": "object"}]}},
           "required": ["tool_choice"]},
    "then": {"not": {"anyOf": [
        {"properties": {"response_format": {"type": "object", "properties": {"type": {"enum": ["json_object", "json_schema"]}},
                                            "required": ["type"]}}, "required": ["response_format"]},
        {"properties": {"structured_outputs": {"type": "object"}}, "required": ["structured_outputs"]}]}},
}
