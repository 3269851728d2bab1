"""OpenAI wire format: request and response models. Pydantic only (no torch, no Ray).

Requests accept unknown fields (clients send newer OpenAI fields all the time); the ingress
logs them. Fields we cannot honour are declared so that setting them is a clear 400 rather
than a silent no-op.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

MAX_STOP_SEQUENCES = 16
MAX_N = 16


class OpenAIRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    def unknown_fields(self) -> list[str]:
        return sorted((self.model_extra or {}).keys())


class OpenAIResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


# ----------------------------------------------------------------------------- shared


class SamplingFields(OpenAIRequest):
    """Sampling parameters shared by /v1/chat/completions and /v1/completions."""

    model: str = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=MAX_N)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    logprobs: Any = None
    logit_bias: dict[str, float] | None = None

    @field_validator("stop")
    @classmethod
    def _stop_sequences(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else list(value)
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty strings")
        return stops or None

    # Validators on the field itself, so the 400 names the parameter (param="logprobs").
    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: Any) -> Any:
        if value not in (None, False, 0):
            raise ValueError("logprobs are not supported by this server")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _no_logit_bias(cls, value: Any) -> Any:
        if value:
            raise ValueError("logit_bias is not supported by this server")
        return value

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and not info.data.get("stream"):
            raise ValueError("stream_options is only allowed when stream is true")
        return value

    @property
    def include_usage_in_stream(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def requested_max_tokens(self) -> int | None:
        """The completion budget the client asked for (None: the rest of the context)."""
        return self.max_tokens


class StreamOptions(OpenAIRequest):
    include_usage: bool = False
    # vLLM's extension: usage on every chunk. The gateway also uses it to settle the token
    # usage of streams a client aborts.
    continuous_usage_stats: bool = False


class Usage(OpenAIResponse):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


FinishReason = Literal["stop", "length"]


# ----------------------------------------------------------------------------- chat


class TextContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextContentPart] | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _content_required(self) -> ChatMessage:
        if self.content is None:
            raise ValueError(f"{self.role} messages need content")
        if isinstance(self.content, list) and not self.content:
            raise ValueError("content must not be an empty list")
        return self

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        # Same joining rule as vLLM: text parts are separated by newlines.
        return "\n".join(part.text for part in self.content or [])


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[Any] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, value: Any) -> Any:
        if value:
            raise ValueError("tool calling is not supported by this server")
        return value

    @field_validator("tool_choice")
    @classmethod
    def _no_tool_choice(cls, value: Any) -> Any:
        if value not in (None, "none"):
            raise ValueError("tool calling is not supported by this server")
        return value

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        if value and value.get("type") not in (None, "text"):
            raise ValueError("only response_format type 'text' is supported")
        return value

    @property
    def requested_max_tokens(self) -> int | None:
        # Chat's newer name is max_completion_tokens; it wins when both are sent.
        return self.max_completion_tokens or self.max_tokens


class ChatMessageOut(OpenAIResponse):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(OpenAIResponse):
    index: int
    message: ChatMessageOut
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletionResponse(OpenAIResponse):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(OpenAIResponse):
    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler):
        # OpenAI sends only the keys a delta carries: {"content": "x"}, or {} at the end.
        return {key: value for key, value in handler(self).items() if value is not None}


class ChatChunkChoice(OpenAIResponse):
    index: int
    delta: ChatDelta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(OpenAIResponse):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


# ----------------------------------------------------------------------------- completions

TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class CompletionRequest(SamplingFields):
    prompt: str | Annotated[list[str], Field(min_length=1)] | TokenIds | Annotated[
        list[TokenIds], Field(min_length=1)
    ]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: Any) -> Any:
        if value:
            raise ValueError("suffix is not supported by this server")
        return value

    @field_validator("best_of")
    @classmethod
    def _no_best_of(cls, value: Any, info: ValidationInfo) -> Any:
        if value not in (None, 1, info.data.get("n")):
            raise ValueError("best_of is not supported by this server")
        return value

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: text, or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and isinstance(p[0], int):
            return [list(p)]  # one tokenized prompt
        return list(p)


class CompletionChoice(OpenAIResponse):
    index: int
    text: str
    finish_reason: FinishReason | None
    logprobs: None = None


class CompletionResponse(OpenAIResponse):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


# ----------------------------------------------------------------------------- embeddings


class EmbeddingRequest(OpenAIRequest):
    model: str = Field(..., min_length=1)
    input: str | Annotated[list[str], Field(min_length=1)] | TokenIds | Annotated[
        list[TokenIds], Field(min_length=1)
    ]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _no_empty_strings(cls, value: Any) -> Any:
        items = [value] if isinstance(value, str) else value
        if any(isinstance(item, str) and item == "" for item in items):
            raise ValueError("input strings must not be empty")
        return value

    def inputs(self) -> list[str | list[int]]:
        i = self.input
        if isinstance(i, str):
            return [i]
        if i and isinstance(i[0], int):
            return [list(i)]
        return list(i)


class EmbeddingData(OpenAIResponse):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(OpenAIResponse):
    prompt_tokens: int
    total_tokens: int
    # Tokens of each input, for the gateway's per-input cache. Never serialised to clients.
    input_tokens: list[int] | None = Field(None, exclude=True)


class EmbeddingResponse(OpenAIResponse):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


# ----------------------------------------------------------------------------- models

ModelStatus = Literal["ready", "loading", "failed", "unavailable", "circuit_open", "circuit_half_open"]


class ModelCard(OpenAIResponse):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    task: str | None
    status: ModelStatus


class ModelList(OpenAIResponse):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ----------------------------------------------------------------------------- errors


class ErrorDetail(BaseModel):
    """The body of every error response (errors.APIError.body)."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


SamplingFields.model_rebuild()
ChatCompletionRequest.model_rebuild()
CompletionRequest.model_rebuild()
