"""What differs between the two generation endpoints, chat and completions, as one spec each:
the prompt-size estimate for the token reservation, where a chunk's text is, the response a
finished stream amounts to (what the cache stores), and the chunks a cached response is
replayed as. The flow (generation_flow.py) is the same for both.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from contract.endpoints import CHAT, COMPLETE, Endpoint
from contract.logprobs import ChatLogprobs
from contract.model_api import NotStartedInTime
from contract.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatMessageOut,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    SamplingFields,
    StreamOptions,
    Usage,
    new_id,
    now,
)
from contract.tool_calling import FunctionCall, ToolCall, ToolCallDelta
from serve_app.ingress.gateway import request_record


@dataclass
class StreamTotals:
    """What a stream has carried so far, per choice: its text, its finish reason; and usage."""

    texts: dict[int, str] = field(default_factory=dict)
    finishes: dict[int, str] = field(default_factory=dict)
    usage: Usage | None = None
    # chat: per choice, the reasoning text and the tool calls (by their index) so far
    reasoning: dict[int, str] = field(default_factory=dict)
    tool_calls: dict[int, dict[int, ToolCall]] = field(default_factory=dict)
    logprobs: dict[int, Any] = field(default_factory=dict)  # per choice: its logprobs so far


@dataclass(frozen=True)
class GenerationSpec:
    endpoint: Endpoint
    id_prefix: str
    prompt_param: str  # the request field that holds the prompt ("messages" or "prompt")
    response: type[ChatCompletionResponse] | type[CompletionResponse]
    # (number of prompts, their estimated tokens: about four characters per token)
    prompt_estimate: Callable[[Any], tuple[int, int]]
    chunk_text: Callable[[Any], str | None]  # a chunk choice's new text
    assemble: Callable[[str, StreamTotals], BaseModel]  # (model, totals) -> the whole response
    absorb: Callable[[Any, StreamTotals], None]  # bookkeeps a chunk choice's other parts
    replay: Callable[[Any, StreamOptions], Iterator[BaseModel]]  # a stored response as chunks

    def reservation(self, request: SamplingFields, default_completion: int) -> tuple[int, str]:
        """Tokens reserved at admission: the prompt estimate plus the completion budget of every
        choice (settlement corrects it from the real usage); and the field that makes most of
        it, which a request too large for its key's limit is told to shrink."""
        prompts, prompt_tokens = self.prompt_estimate(request)
        completion = (request.requested_max_tokens or default_completion) * request.n * prompts
        return prompt_tokens + completion, max_tokens_param(request) if completion >= prompt_tokens else self.prompt_param

    def from_cache(self, stored: bytes) -> BaseModel:
        """A cached response, with a fresh id and time as every response has its own."""
        response = self.response.model_validate_json(stored)
        return response.model_copy(update={"id": new_id(self.id_prefix), "created": now()})


def max_tokens_param(request: SamplingFields) -> str:
    """The field that set the completion budget (chat's newer name wins when both are sent)."""
    return "max_completion_tokens" if getattr(request, "max_completion_tokens", None) else "max_tokens"


def _totals_usage(totals: StreamTotals) -> Usage:
    return totals.usage or Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)


# ----------------------------------------------------------------------------- chat


def _chat_estimate(request: ChatCompletionRequest) -> tuple[int, int]:
    tools = sum(len(json.dumps(tool.function.parameters or {})) // 4 + 16 for tool in request.tools or [])
    return 1, sum(len(m.text()) // 4 + 4 for m in request.messages) + 8 + tools


def _chat_absorb(choice: ChatChunkChoice, totals: StreamTotals) -> None:
    delta, index = choice.delta, choice.index
    if choice.logprobs is not None and choice.logprobs.content:
        totals.logprobs.setdefault(index, ChatLogprobs(content=[])).content.extend(choice.logprobs.content)
    if delta.reasoning_content:
        totals.reasoning[index] = totals.reasoning.get(index, "") + delta.reasoning_content
    calls = totals.tool_calls.setdefault(index, {}) if delta.tool_calls else {}
    for part in delta.tool_calls or []:
        call = calls.setdefault(part.index, ToolCall(id=part.id or "", function=FunctionCall(name="", arguments="")))
        if part.function is not None:
            call.function.name += part.function.name or ""
            call.function.arguments += part.function.arguments or ""


def _chat_assemble(model: str, totals: StreamTotals) -> ChatCompletionResponse:
    def message(i: int) -> ChatMessageOut:
        calls = [call for _, call in sorted(totals.tool_calls.get(i, {}).items())]
        return ChatMessageOut(content=totals.texts[i] or (None if calls else ""), tool_calls=calls or None,
                              reasoning_content=totals.reasoning.get(i))

    return ChatCompletionResponse(
        id=new_id("chatcmpl"), created=now(), model=model,
        choices=[ChatChoice(index=i, message=message(i), finish_reason=totals.finishes.get(i, "stop"),  # type: ignore[arg-type]
                            logprobs=totals.logprobs.get(i)) for i in sorted(totals.texts)],
        usage=_totals_usage(totals),
    )


def _chat_replay(stored: ChatCompletionResponse, options: StreamOptions) -> Iterator[ChatCompletionChunk]:
    base = {"id": stored.id, "created": stored.created, "model": stored.model}
    for choice in stored.choices:
        message = choice.message
        calls = [ToolCallDelta.opening(i, call.id, call.function.name, call.function.arguments)
                 for i, call in enumerate(message.tool_calls or [])]
        yield ChatCompletionChunk(**base, choices=[ChatChunkChoice(index=choice.index, delta=ChatDelta(role="assistant", content=""))])
        yield ChatCompletionChunk(**base, choices=[ChatChunkChoice(index=choice.index, logprobs=choice.logprobs, delta=ChatDelta(
            content=message.content, reasoning_content=message.reasoning_content, tool_calls=calls or None))])
        yield ChatCompletionChunk(
            **base, choices=[ChatChunkChoice(index=choice.index, delta=ChatDelta(), finish_reason=choice.finish_reason)],
            usage=stored.usage if options.continuous_usage_stats else None,
        )
    if options.include_usage:
        yield ChatCompletionChunk(**base, choices=[], usage=stored.usage)


CHAT_SPEC = GenerationSpec(
    endpoint=CHAT,
    id_prefix="chatcmpl",
    prompt_param="messages",
    response=ChatCompletionResponse,
    prompt_estimate=_chat_estimate,
    chunk_text=lambda choice: choice.delta.content,
    assemble=_chat_assemble,
    absorb=_chat_absorb,
    replay=_chat_replay,
)


# ----------------------------------------------------------------------------- completions


def _completion_estimate(request: CompletionRequest) -> tuple[int, int]:
    prompts = request.prompts()
    return len(prompts), sum(len(p) // 4 + 1 if isinstance(p, str) else len(p) for p in prompts)


def _completion_assemble(model: str, totals: StreamTotals) -> CompletionResponse:
    return CompletionResponse(
        id=new_id("cmpl"), created=now(), model=model,
        choices=[
            CompletionChoice(index=i, text=totals.texts[i], finish_reason=totals.finishes.get(i, "stop"),  # type: ignore[arg-type]
                             logprobs=totals.logprobs.get(i))
            for i in sorted(totals.texts)
        ],
        usage=_totals_usage(totals),
    )


def _completion_absorb(choice: CompletionChoice, totals: StreamTotals) -> None:
    if (part := choice.logprobs) is None:
        return
    if (so_far := totals.logprobs.get(choice.index)) is None:
        totals.logprobs[choice.index] = part.model_copy(deep=True)
        return
    for name in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):  # offsets are in the whole text
        getattr(so_far, name).extend(getattr(part, name))


def _completion_replay(stored: CompletionResponse, options: StreamOptions) -> Iterator[CompletionResponse]:
    base = {"id": stored.id, "created": stored.created, "model": stored.model}
    for choice in stored.choices:
        yield CompletionResponse(**base, choices=[choice])
    if options.include_usage:
        yield CompletionResponse(**base, choices=[], usage=stored.usage)


COMPLETE_SPEC = GenerationSpec(
    endpoint=COMPLETE,
    id_prefix="cmpl",
    prompt_param="prompt",
    response=CompletionResponse,
    prompt_estimate=_completion_estimate,
    chunk_text=lambda choice: choice.text,
    assemble=_completion_assemble,
    absorb=_completion_absorb,
    replay=_completion_replay,
)


# ----------------------------------------------------------------------------- streams


async def trimmed_chunks(
    upstream: AsyncIterator[Any], spec: GenerationSpec, timeout_s: float, wanted: StreamOptions, totals: StreamTotals,
    on_first: Callable[[float], None] | None = None,
) -> AsyncIterator[Any]:
    """The model's chunks, bookkept into `totals` and trimmed to what the client asked for
    (the gateway always asks the model for usage on every chunk). `on_first` hears of the
    first chunk with the seconds the replica spent before sending it: a chat stream's first
    chunk comes with its first token, so that the prompt's prefill never waits for a chunk's
    trip to the client, as vLLM sends it (docs/performance.md)."""
    iterator = upstream.__aiter__()
    record = request_record.current()
    first = True
    while True:
        try:
            async with asyncio.timeout(timeout_s):  # per chunk; no task per call, unlike wait_for
                chunk = await iterator.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            if first:  # nothing yet: waiting in Serve's queue, or in the engine's for room to start
                raise NotStartedInTime(f"no replica started the stream within {timeout_s:g}s") from None
            raise
        if first and on_first is not None:
            on_first(getattr(chunk, "_replica_started_s", None) or 0.0)
        first = False
        if chunk.usage is not None:
            totals.usage = chunk.usage
        for choice in chunk.choices:
            text = spec.chunk_text(choice) or ""
            if text and record is not None and record.ttft_s is None:
                record.first_token()  # the access log's time to first token: the first text, not the role chunk
            totals.texts[choice.index] = totals.texts.get(choice.index, "") + text
            spec.absorb(choice, totals)
            if choice.finish_reason:
                totals.finishes[choice.index] = choice.finish_reason
        if not chunk.choices:  # the usage-only chunk
            if wanted.include_usage:
                yield chunk
            continue
        yield chunk if wanted.continuous_usage_stats else chunk.model_copy(update={"usage": None})


async def replayed(chunks: Iterator[BaseModel]) -> AsyncIterator[BaseModel]:
    for chunk in chunks:
        yield chunk
