"""Wire format of /tokenize and /detokenize, in vLLM's shape: a prompt, or chat messages rendered
with the model's chat template, to the token ids the model reads; token ids back to text.
Pydantic only, like protocol.py; unlike its non-generation requests these refuse unknown fields
(a vLLM option we lack, such as chat_template, would otherwise be silently ignored).
"""

from __future__ import annotations

from typing import Annotated, Any

import pydantic_core
from pydantic import ConfigDict, Field, model_validator

from .protocol import ChatMessage, OpenAIRequest, OpenAIResponse
from .schema_rules import integer, with_rules

# Exactly one of the two is given (a null one is not).
PROMPT_OR_MESSAGES: dict[str, Any] = {"oneOf": [
    {"required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
    {"required": ["messages"], "properties": {"messages": {"type": "array"}}},
]}


class TokenizeRequest(OpenAIRequest):
    model_config = ConfigDict(extra="forbid", json_schema_extra=with_rules(PROMPT_OR_MESSAGES))

    model: str = Field(..., min_length=1)
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    # The model's special tokens (BOS, ...) around the text; unset: True for a prompt, False for
    # messages (their chat template already has them), as vLLM defaults each.
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True  # messages: end with the assistant's turn opening
    return_token_strs: bool = False  # also each token as the tokenizer spells it

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> TokenizeRequest:
        given = [name for name in ("prompt", "messages") if getattr(self, name) is not None]
        if len(given) != 1:
            # Raised with its field's location, so the 400 names it (a model error names none).
            field, message = ("messages", "give either prompt or messages, not both") if given else (
                "prompt", "either prompt or messages is required")
            raise pydantic_core.ValidationError.from_exception_data(type(self).__name__, [{
                "type": pydantic_core.PydanticCustomError("value_error", message), "loc": (field,), "input": None}])
        return self

    @property
    def special_tokens(self) -> bool:
        return self.add_special_tokens if self.add_special_tokens is not None else self.messages is None


class TokenizeResponse(OpenAIResponse):
    count: int
    max_model_len: int | None  # the most tokens the model reads (a prompt and its completion, for a generator)
    tokens: list[int]
    token_strs: list[str] | None = None  # with return_token_strs


class DetokenizeRequest(OpenAIRequest):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., min_length=1)
    tokens: Annotated[list[integer(ge=0)], Field(min_length=1)]


class DetokenizeResponse(OpenAIResponse):
    prompt: str
