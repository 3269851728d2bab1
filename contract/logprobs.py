"""OpenAI's log-probability objects: chat's `logprobs.content` entries and the legacy completions'
parallel lists. Pydantic only; deployments/logprob_entries.py builds them from generated tokens."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo

from .schema_rules import integer

MAX_TOP_LOGPROBS = 20  # alternatives per token a request may ask for (OpenAI's and vLLM's default limit)
MIN_LOGPROB = -9999.0  # what -inf becomes: JSON has no infinity (OpenAI and vLLM send the same)

# top_logprobs asks for alternatives of the tokens that logprobs returns: without logprobs it is refused.
TOP_LOGPROBS_NEED_LOGPROBS: dict[str, Any] = {
    "if": {"properties": {"top_logprobs": {"type": "integer"}}, "required": ["top_logprobs"]},
    "then": {"properties": {"logprobs": {"const": True}}, "required": ["logprobs"]},
}


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TopLogprob(_Wire):
    token: str
    logprob: float
    bytes: list[int] | None  # the token's UTF-8 bytes


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]  # the likeliest tokens at this position, as many as top_logprobs asked


class ChatLogprobs(_Wire):
    content: list[ChatTokenLogprob] | None
    refusal: list[ChatTokenLogprob] | None = None


class CompletionLogprobs(_Wire):
    """One entry per token in each list. `top_logprobs`: the sampled token's and the `logprobs`
    likeliest tokens' log-probabilities by their text (up to logprobs + 1 of them, as OpenAI says)."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]  # where each token's text starts in the choice's text


def _with_logprobs(value: int | None, info: ValidationInfo) -> int | None:
    if value is not None and not info.data.get("logprobs"):
        raise ValueError("top_logprobs needs logprobs set to true")
    return value


# Chat's top_logprobs: alternatives per token, only with logprobs true.
TopLogprobs = Annotated[integer(ge=0, le=MAX_TOP_LOGPROBS) | None, AfterValidator(_with_logprobs)]
