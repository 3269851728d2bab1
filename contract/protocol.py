"""OpenAI wire format: request and response models. Pydantic only (no torch, no Ray).

Generation requests (chat, completions) refuse a field they do not know, as OpenAI does: one
that changed what is sampled would otherwise be silently ignored. The fields that change
nothing a client relies on are declared and accepted (NO_EFFECT_FIELDS). Other requests accept
unknown fields, which the ingress logs. Fields we cannot honour yet are declared so that
setting them is a clear 400 rather than a silent no-op.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_serializer,
)

from .chat_messages import ChatMessage
from .logprobs import (
    MAX_TOP_LOGPROBS,
    TOP_LOGPROBS_NEED_LOGPROBS,
    ChatLogprobs,
    CompletionLogprobs,
    TopLogprobs,
)
from .schema_rules import STREAM_OPTIONS_NEED_STREAM, exactly, integer, with_rules
from .structured_outputs import ONE_STRUCTURED_OUTPUT, Constraint, ResponseFormat, StructuredOutputs
from .tool_calling import (
    MAX_TOOLS,
    ONE_FORCED_OUTPUT,
    TOOL_CHOICE_NEEDS_TOOLS,
    NamedToolChoice,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    tool_choice_constraint,
)

MAX_STOP_SEQUENCES = 16
MAX_N = 16
MAX_LOGIT_BIAS = 300  # OpenAI's own limit on logit_bias entries
TOKEN_ID_KEY = "^[0-9]{1,10}$"  # a logit_bias key: a token id, as a string


class OpenAIRequest(BaseModel):
    # strict: types are taken as JSON Schema states them (no "5" for 5, no 0 for false), so
    # the OpenAPI document describes exactly what is accepted; numbers still accept integers.
    model_config = ConfigDict(extra="allow", strict=True)

    def unknown_fields(self) -> list[str]:
        return sorted((self.model_extra or {}).keys())


class TokenBudget(BaseModel):
    """The most tokens one request may have in all (the ingress's max_request_tokens), and how
    many of them the ingress counted itself (items it answers from its cache and does not send)."""

    model_config = ConfigDict(extra="forbid")
    max_tokens: int
    counted_tokens: int = 0


class BudgetedRequest(OpenAIRequest):
    """A request whose work the model replica bounds by its tokens (embeddings, rerank, classify)."""

    # Set by the ingress on the copy it sends to the model, where the tokenizer runs and the count
    # is exact (contract/model_api.py check_request_tokens). Private attributes are neither read
    # from nor written to JSON, so a client cannot set it, but they travel between Ray processes.
    _token_budget: TokenBudget | None = PrivateAttr(default=None)


class OpenAIResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamedResponse(OpenAIResponse):
    """A response that is also a stream's chunk (chat chunks; completions stream themselves)."""

    # Set by the model replica on a stream's first chunk: seconds from the replica starting the
    # call to that chunk. A chat stream's first chunk waits for the first token (as vLLM's does),
    # so the gateway subtracts this to time Serve's queue alone. Private attributes are neither
    # validated nor serialized to JSON, but travel with the object between Ray processes.
    _replica_started_s: float | None = PrivateAttr(default=None)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


# ----------------------------------------------------------------------------- shared


NonEmptyText = Annotated[str, Field(min_length=1)]


class SamplingFields(OpenAIRequest):
    """Sampling parameters shared by /v1/chat/completions and /v1/completions. A field not
    declared here is a 400 (extra="forbid")."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=with_rules(STREAM_OPTIONS_NEED_STREAM))

    model: str = Field(..., min_length=1)
    max_tokens: integer(ge=1) | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: integer(ge=1, le=MAX_N) = 1
    # Any non-negative integer; engines get it reduced to 63 bits (the same seed, the same draw).
    seed: integer(ge=0) | None = None
    stop: Annotated[
        str | list[str] | None,
        exactly({"anyOf": [{"type": "string", "minLength": 1},
                           {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": MAX_STOP_SEQUENCES}]}),
    ] = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Token id (as a string) -> bias added to its logit before sampling, as OpenAI defines it.
    # Engines that cannot apply it refuse it (the replica knows its engine).
    logit_bias: Annotated[
        dict[str, float] | None,
        exactly({"type": "object", "maxProperties": MAX_LOGIT_BIAS, "propertyNames": {"pattern": TOKEN_ID_KEY},
                 "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100}}),
    ] = None
    # vLLM's sampling extras (clients send them through extra_body).
    top_k: integer(ge=-1) = Field(-1, description="Sample from the k most likely tokens; -1 or 0: all.")
    min_p: float = Field(0.0, ge=0.0, le=1.0, description="Drop tokens less likely than min_p times the most likely.")
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0, description="Above 1 discourages tokens already in "
                                      "the prompt or the output (divides a positive logit, multiplies a negative one).")
    min_tokens: integer(ge=0) = Field(0, description="Tokens to generate before EOS, stop_token_ids or stop may end it.")
    ignore_eos: bool = Field(False, description="Keep generating past the model's end-of-sequence token.")
    stop_token_ids: Annotated[list[integer(ge=0)], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    include_stop_str_in_output: bool = Field(False, description="Keep the stop string that ended the text in it.")
    skip_special_tokens: bool = Field(True, description="Leave special tokens out of the text.")
    structured_outputs: StructuredOutputs | None = None
    # NO_EFFECT_FIELDS: accepted, and change nothing a client relies on here (OpenAI's
    # bookkeeping, caching and latency hints; vLLM's scheduling hints).
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prediction: dict[str, Any] | None = None
    priority: integer() | None = None
    request_id: str | None = None
    cache_salt: str | None = None
    modalities: list[Literal["text"]] | None = None

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if not value:
            return None
        if len(value) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} tokens may be biased")
        for token, bias in value.items():
            if not re.fullmatch(TOKEN_ID_KEY, token):
                raise ValueError(f"keys are token ids (non-negative integers as strings), not {token[:32]!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"the bias of token {token} is {bias}; biases are between -100 and 100")
        return value

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

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and not info.data.get("stream"):
            raise ValueError("stream_options is only allowed when stream is true")
        return value

    def constraint(self) -> tuple[Constraint, str] | None:
        """What the output must match, and the field that asked for it."""
        if self.structured_outputs is not None:
            return self.structured_outputs.constraint(), "structured_outputs"
        return None

    @property
    def include_usage_in_stream(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def requested_max_tokens(self) -> int | None:
        """The completion budget the client asked for (None: the rest of the context)."""
        return self.max_tokens


# The declared fields that change nothing a client relies on (see SamplingFields).
NO_EFFECT_FIELDS = frozenset({
    "user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key", "prediction", "priority",
    "request_id", "cache_salt", "modalities",
})


class StreamOptions(OpenAIRequest):
    include_usage: bool = False
    # vLLM's extension: usage on every chunk. The gateway also uses it to settle the token
    # usage of streams a client aborts.
    continuous_usage_stats: bool = False


class Usage(OpenAIResponse):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


FinishReason = Literal["stop", "length", "tool_calls"]


# ----------------------------------------------------------------------------- chat


class ChatCompletionRequest(SamplingFields):
    model_config = ConfigDict(json_schema_extra=with_rules(STREAM_OPTIONS_NEED_STREAM, ONE_STRUCTURED_OUTPUT,
                                                           TOOL_CHOICE_NEEDS_TOOLS, ONE_FORCED_OUTPUT,
                                                           TOP_LOGPROBS_NEED_LOGPROBS))

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: integer(ge=1) | None = None
    logprobs: bool | None = None  # the sampled tokens' log-probabilities
    top_logprobs: TopLogprobs = None
    tools: Annotated[list[Tool], Field(min_length=1, max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None  # False: at most one call
    response_format: ResponseFormat | None = None

    @field_validator("tool_choice")
    @classmethod
    def _tools_to_choose_from(cls, value: ToolChoice | None, info: ValidationInfo) -> ToolChoice | None:
        if value not in (None, "none") and not info.data.get("tools"):
            raise ValueError("tool_choice needs tools to choose from")
        if _forces(value) and info.data.get("structured_outputs") is not None:
            raise ValueError(FORCED_FORMAT)
        return value

    @field_validator("response_format")
    @classmethod
    def _one_format(cls, value: ResponseFormat | None, info: ValidationInfo) -> ResponseFormat | None:
        if value is not None and value.constraint() is not None:
            if info.data.get("structured_outputs") is not None:
                raise ValueError("give response_format or structured_outputs, not both")
            if _forces(info.data.get("tool_choice")):
                raise ValueError(FORCED_FORMAT)
        return value

    def constraint(self) -> tuple[Constraint, str] | None:
        if self.tools and (forced := tool_choice_constraint(self.tools, self.tool_choice, self.parallel_tool_calls)):
            return forced, "tools"  # the tools' schemas make it
        if self.response_format is not None and (constraint := self.response_format.constraint()) is not None:
            return constraint, "response_format"
        return super().constraint()

    @property
    def requested_max_tokens(self) -> int | None:
        # Chat's newer name is max_completion_tokens; it wins when both are sent.
        return self.max_completion_tokens or self.max_tokens


FORCED_FORMAT = "a required or named tool_choice fixes the output's format: no response_format or structured_outputs"


def _forces(choice: ToolChoice | None) -> bool:
    return choice == "required" or isinstance(choice, NamedToolChoice)


class ChatMessageOut(OpenAIResponse):
    role: Literal["assistant"] = "assistant"
    content: str | None
    # vLLM's name for the text a reasoning parser took out of the answer.
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] | None = None

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler):
        # content is always there (null with tool calls, as OpenAI sends it); the rest when set.
        return {key: value for key, value in handler(self).items() if value is not None or key == "content"}


class ChatChoice(OpenAIResponse):
    index: int
    message: ChatMessageOut
    finish_reason: FinishReason
    logprobs: ChatLogprobs | None = None


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
    reasoning_content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler):
        # OpenAI sends only the keys a delta carries: {"content": "x"}, or {} at the end.
        return {key: value for key, value in handler(self).items() if value is not None}


class ChatChunkChoice(OpenAIResponse):
    index: int
    delta: ChatDelta
    finish_reason: FinishReason | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(StreamedResponse):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


# ----------------------------------------------------------------------------- completions

TokenIds = Annotated[list[integer(ge=0)], Field(min_length=1)]


class CompletionRequest(SamplingFields):
    prompt: NonEmptyText | Annotated[list[NonEmptyText], Field(min_length=1)] | TokenIds | Annotated[
        list[TokenIds], Field(min_length=1)
    ]
    echo: bool = False
    # The sampled tokens' log-probabilities, with this many alternatives for each.
    logprobs: integer(ge=0, le=MAX_TOP_LOGPROBS) | None = None
    suffix: Annotated[str | None, exactly({"type": "string", "maxLength": 0})] = None
    # Candidates to pick the best n from: not done here (nor by vLLM's V1 engine), so only 1.
    best_of: Annotated[integer() | None, exactly({"type": "integer", "const": 1})] = None

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: Any) -> Any:
        if value:
            raise ValueError("suffix is not supported by this server")
        return value

    @field_validator("best_of")
    @classmethod
    def _no_best_of(cls, value: Any) -> Any:
        if value not in (None, 1):
            raise ValueError("best_of is not supported by this server; n gives that many completions")
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
    logprobs: CompletionLogprobs | None = None


class CompletionResponse(StreamedResponse):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


SamplingFields.model_rebuild()
ChatCompletionRequest.model_rebuild()
CompletionRequest.model_rebuild()
