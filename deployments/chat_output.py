"""One chat choice's generated text as the assistant's message: the reasoning parser's
<think> text moved to reasoning_content, then tool calls read from the rest (ToolMode says
how), whole or as stream deltas. Calls get finish_reason "tool_calls"."""

from __future__ import annotations

from contract.protocol import ChatDelta, ChatMessageOut
from contract.tool_calling import (
    FunctionCall,
    FunctionCallDelta,
    ToolCall,
    ToolCallDelta,
    new_call_id,
)

from .call_array import CallArrayReader, CallPiece
from .chat_tools import ToolMode
from .reasoning_parsers import make_reasoning_parser
from .tool_parsers import ParsedToolCall, make_tool_parser


class ChoiceOutput:
    """Feed a choice's text as it comes (`feed`, then `finish`) for deltas, or all of it at
    once (`message`). One instance per choice."""

    def __init__(self, mode: ToolMode, reasoning_parser: str | None = None, prompt_text: str = ""):
        self._mode = mode
        self._reasoning = make_reasoning_parser(reasoning_parser, prompt_text) if reasoning_parser else None
        self._tools = make_tool_parser(mode.parser) if mode.kind == "parsed" and mode.parser else None
        self._array = CallArrayReader() if mode.kind == "required" else None
        self._ids: dict[int, str] = {}  # the required array's calls: their ids
        self._named_id: str | None = None
        self._calls = 0

    # ------------------------------------------------------------------ streamed

    def feed(self, text: str) -> ChatDelta | None:
        reasoning, content = self._split(text, end=False)
        return self._delta(reasoning, *self._content(content, end=False))

    def finish(self, finish_reason: str) -> tuple[ChatDelta | None, str]:
        """The last delta (what parsers held back) and the choice's finish reason."""
        reasoning, content = self._split("", end=True)
        delta = self._delta(reasoning, *self._content(content, end=True))
        return delta, self._finish_reason(finish_reason)

    # ------------------------------------------------------------------ whole

    def message(self, text: str, finish_reason: str) -> tuple[ChatMessageOut, str]:
        reasoning, content = (self._reasoning.parse(text) if self._reasoning else (None, text))
        content = content or ""
        calls: list[ToolCall] = []
        if self._mode.kind == "named":
            calls = [ToolCall(id=new_call_id(), function=FunctionCall(name=self._mode.name, arguments=content))]
            content = None
        elif self._array is not None:
            calls = _complete_calls(self._array, self._array.feed(content))
            content = None
        elif self._tools is not None:
            content, parsed = self._tools.parse(content)
            calls = [_whole(call) for call in parsed]
        self._calls = len(calls)
        message = ChatMessageOut(content=content, reasoning_content=reasoning, tool_calls=calls or None)
        return message, self._finish_reason(finish_reason)

    # ------------------------------------------------------------------ internals

    def _split(self, text: str, *, end: bool) -> tuple[str, str]:
        if self._reasoning is None:
            return "", text
        step = self._reasoning.finish() if end else self._reasoning.feed(text)
        return step.reasoning, step.content

    def _content(self, text: str, *, end: bool) -> tuple[str, list[ToolCallDelta]]:
        """(content for the client, tool-call deltas) from the answer's new text."""
        if self._mode.kind == "named":
            if not text:
                return "", []
            if self._named_id is None:
                self._named_id, self._calls = new_call_id(), 1
                return "", [ToolCallDelta.opening(0, self._named_id, self._mode.name or "", text)]
            return "", [ToolCallDelta(index=0, function=FunctionCallDelta(arguments=text))]
        if self._array is not None:
            return "", [self._array_delta(piece) for piece in self._array.feed(text)]
        if self._tools is not None:
            steps = [self._tools.feed(text)] if text else []
            if end:
                steps.append(self._tools.finish())
            return "".join(s.content for s in steps), [self._opening(call) for s in steps for call in s.calls]
        return text, []

    def _opening(self, call: ParsedToolCall) -> ToolCallDelta:
        delta = ToolCallDelta.opening(self._calls, new_call_id(), call.name, call.arguments)
        self._calls += 1
        return delta

    def _array_delta(self, piece: CallPiece) -> ToolCallDelta:
        self._calls = max(self._calls, piece.index + 1)
        if piece.name is not None:
            self._ids[piece.index] = new_call_id()
            return ToolCallDelta.opening(piece.index, self._ids[piece.index], piece.name, piece.arguments)
        return ToolCallDelta(index=piece.index, function=FunctionCallDelta(arguments=piece.arguments))

    def _delta(self, reasoning: str, content: str, calls: list[ToolCallDelta]) -> ChatDelta | None:
        if not (reasoning or content or calls):
            return None
        return ChatDelta(reasoning_content=reasoning or None, content=content or None, tool_calls=calls or None)

    def _finish_reason(self, engine_finish: str) -> str:
        return "tool_calls" if self._calls and engine_finish == "stop" else engine_finish


def _whole(call: ParsedToolCall) -> ToolCall:
    return ToolCall(id=new_call_id(), function=FunctionCall(name=call.name, arguments=call.arguments))


def _complete_calls(reader: CallArrayReader, pieces: list[CallPiece]) -> list[ToolCall]:
    """The calls whose elements the whole output completes (a cut-off one is left out)."""
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    for piece in pieces:
        if piece.name is not None:
            names[piece.index] = piece.name
        arguments[piece.index] = arguments.get(piece.index, "") + piece.arguments
    return [ToolCall(id=new_call_id(), function=FunctionCall(name=names[i], arguments=arguments[i]))
            for i in reader.complete]
