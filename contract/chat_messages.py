"""Chat messages as a request carries them: each role's content, assistant tool calls and the
tool results that answer them, with the rules between those fields stated as JSON Schema too."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .schema_rules import with_rules
from .tool_calling import ToolCall


class TextContentPart(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["text"]
    text: str


# What each role's message needs: content, except an assistant message that makes tool calls;
# tool calls only from the assistant; a tool's result names the call it answers.
MESSAGE_RULES: tuple[dict[str, Any], ...] = (
    {"if": {"properties": {"role": {"const": "assistant"}, "tool_calls": {"type": "array"}}, "required": ["role", "tool_calls"]},
     "else": {"properties": {"content": {"not": {"type": "null"}}}, "required": ["content"]}},
    {"if": {"properties": {"tool_calls": {"type": "array"}}, "required": ["tool_calls"]},
     "then": {"properties": {"role": {"const": "assistant"}}}},
    {"if": {"properties": {"role": {"const": "tool"}}, "required": ["role"]},
     "then": {"properties": {"tool_call_id": {"type": "string"}}, "required": ["tool_call_id"]}},
)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, json_schema_extra=with_rules(*MESSAGE_RULES))
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | Annotated[list[TextContentPart], Field(min_length=1)] | None = None
    name: str | None = None
    tool_calls: Annotated[list[ToolCall], Field(min_length=1)] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _what_the_role_needs(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content")
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only assistant messages make tool calls")
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        # Same joining rule as vLLM: text parts are separated by newlines.
        return "\n".join(part.text for part in self.content)
