"""Tool-call parsers (vLLM's `--tool-call-parser`): read the calls a model wrote in its own
format out of its output, whole or streamed. `hermes`: `<tool_call>{"name", "arguments"}
</tool_call>` blocks amid text (Hermes 2 Pro, Qwen2.5, Qwen3); `llama3_json`: the output is
`{"name", "parameters"}` objects split by `;`, maybe after `<|python_tag|>` (Llama 3.1-4);
`pythonic`: the output is a Python list of calls `[f(a=1), g()]` (Llama 3.2, Llama 4), read
with `ast` as literals only. Text that does not parse as calls stays content, verbatim but for
whitespace next to a call; streaming gives each call whole once it is complete."""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar

HERMES_START, HERMES_END = "<tool_call>", "</tool_call>"
PYTHON_TAG, PYTHON_START, PYTHON_END = "<|python_tag|>", "<|python_start|>", "<|python_end|>"


@dataclass(frozen=True)
class ParsedToolCall:
    name: str
    arguments: str  # the arguments object as JSON text


@dataclass(frozen=True)
class ToolStreamStep:
    content: str = ""  # text for the client's `content`, now
    calls: tuple[ParsedToolCall, ...] = ()  # tool calls completed by this piece, in order


class _Content:
    """Content on its way out: whitespace is held until what follows shows whether it touches a
    call (dropped) or only text (released as it was)."""

    def __init__(self):
        self._held = ""
        self._after_call = False
        self._parts: list[str] = []

    def text(self, text: str) -> None:
        text = self._held + text
        body = text.rstrip()
        if not body:
            self._held = text
            return
        if self._after_call:
            body = body.lstrip()
            self._after_call = False
        self._parts.append(body)
        self._held = text[len(text.rstrip()):]

    def call(self) -> None:
        self._held, self._after_call = "", True

    def take(self, final: bool) -> str:
        if final and not self._after_call:
            self._parts.append(self._held)
        if final:
            self._held = ""
        out, self._parts = "".join(self._parts), []
        return out


class ToolParser:
    """One per generated sequence: `feed` pieces then `finish`, or `parse` the whole output."""

    name: ClassVar[str]

    def __init__(self):
        self._buffer = ""
        self._content = _Content()
        self._calls: list[ParsedToolCall] = []

    def parse(self, text: str) -> tuple[str | None, list[ParsedToolCall]]:
        """Whole output -> (content outside the calls, None when there is none or only
        whitespace; the calls). Output that does not parse as calls is all content."""
        fresh = type(self)()
        steps = (fresh.feed(text), fresh.finish())
        content = "".join(step.content for step in steps)
        return (content if content.strip() else None), [call for step in steps for call in step.calls]

    def feed(self, delta: str) -> ToolStreamStep:
        self._buffer += delta
        self._drain(final=False)
        return self._step(final=False)

    def finish(self) -> ToolStreamStep:
        """End of output: what was held goes out, as content if it never became a valid call."""
        self._drain(final=True)
        return self._step(final=True)

    def _step(self, *, final: bool) -> ToolStreamStep:
        calls, self._calls = tuple(self._calls), []
        return ToolStreamStep(self._content.take(final), calls)

    def _call(self, call: ParsedToolCall) -> None:
        self._content.call()
        self._calls.append(call)

    def _drain(self, *, final: bool) -> None:
        raise NotImplementedError


class HermesToolParser(ToolParser):
    """`<tool_call>` JSON `</tool_call>` blocks anywhere in the text; text around them is
    content at once. A block whose JSON is not a call stays content, tags included; an
    unclosed block at the end counts when its JSON is complete (as in vLLM)."""

    name = "hermes"

    def __init__(self):
        super().__init__()
        self._in_call = False

    def _drain(self, *, final: bool) -> None:
        while True:
            if not self._in_call:
                start = self._buffer.find(HERMES_START)
                if start == -1:
                    keep = 0 if final else _partial_tag(self._buffer, HERMES_START)
                    self._content.text(self._buffer[:len(self._buffer) - keep])
                    self._buffer = self._buffer[len(self._buffer) - keep:]
                    return
                self._content.text(self._buffer[:start])
                self._buffer, self._in_call = self._buffer[start + len(HERMES_START):], True
            end = self._buffer.find(HERMES_END)
            if end == -1 and not final:
                return
            body = self._buffer if end == -1 else self._buffer[:end]
            call = _object_call(body, ("arguments", "parameters"), required=False)
            if call is not None:
                self._call(call)
            else:
                self._content.text(HERMES_START + body + ("" if end == -1 else HERMES_END))
            self._buffer = "" if end == -1 else self._buffer[end + len(HERMES_END):]
            self._in_call = False
            if end == -1:
                return


class _WholeOutputParser(ToolParser):
    """Formats where a call is the entire output: an output that opens like one is held to
    the end and parsed then; any other output is content at once."""

    openers: ClassVar[tuple[str, ...]]

    def __init__(self):
        super().__init__()
        self._state = "undecided"  # then "content" or "candidate"

    def _drain(self, *, final: bool) -> None:
        if self._state == "undecided":
            head = self._buffer.lstrip()
            if any(head.startswith(opener) for opener in self.openers):
                self._state = "candidate"
            elif final or (head and not any(opener.startswith(head) for opener in self.openers)):
                self._state = "content"
        if self._state == "content":
            self._content.text(self._buffer)
            self._buffer = ""
        elif final:
            calls = self._calls_in(self._buffer)
            if calls:
                for call in calls:
                    self._call(call)
            else:
                self._content.text(self._buffer)
            self._buffer = ""

    def _calls_in(self, text: str) -> list[ParsedToolCall] | None:
        raise NotImplementedError


class Llama3JsonToolParser(_WholeOutputParser):
    """`{"name": ..., "parameters": {...}}` objects (or "arguments"), `;` between them, maybe
    after `<|python_tag|>` or inside `<|python_start|>...<|python_end|>` (Llama 4)."""

    name = "llama3_json"
    openers = ("{", PYTHON_TAG, PYTHON_START)

    def _calls_in(self, text: str) -> list[ParsedToolCall] | None:
        text = _unwrapped(text)
        decoder, calls, pos = json.JSONDecoder(), [], 0
        while True:
            pos = _skip_space(text, pos)
            if pos == len(text):
                break
            if calls and text[pos] == ";":
                pos = _skip_space(text, pos + 1)
                if pos == len(text):
                    break
            try:
                item, pos = decoder.raw_decode(text, pos)
            except ValueError:
                return None
            call = _dict_call(item, ("parameters", "arguments"), required=True)
            if call is None:
                return None
            calls.append(call)
        return calls or None


class PythonicToolParser(_WholeOutputParser):
    """A Python list of keyword-argument calls whose values are literals (str, numbers, bools,
    None, lists, dicts), maybe inside `<|python_start|>...<|python_end|>`. Read with `ast`,
    never evaluated."""

    name = "pythonic"
    openers = ("[", PYTHON_TAG, PYTHON_START)

    def _calls_in(self, text: str) -> list[ParsedToolCall] | None:
        try:
            tree = ast.parse(_unwrapped(text), mode="eval").body
            if not isinstance(tree, ast.List) or not tree.elts:
                return None
            return [_pythonic_call(node) for node in tree.elts]
        except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
            return None


def _pythonic_call(node: ast.expr) -> ParsedToolCall:
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.args:
        raise ValueError("not a call by name with keyword arguments")
    arguments = {}
    for keyword in node.keywords:
        if keyword.arg is None:  # **spread
            raise ValueError("not a keyword argument")
        arguments[keyword.arg] = _literal(keyword.value)
    return ParsedToolCall(node.func.id, json.dumps(arguments, ensure_ascii=False))


_NAMED_CONSTANTS = {"true": True, "false": False, "null": None}  # JSON spellings models use too


def _literal(node: ast.expr) -> Any:
    """A JSON value from a literal expression; ValueError for anything else."""
    if isinstance(node, ast.Constant):
        value = node.value
        if value is None or isinstance(value, (str, bool, int)):
            return value
        if isinstance(value, float) and math.isfinite(value):
            return value
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = node.operand
        if isinstance(operand, ast.Constant) and type(operand.value) in (int, float):
            return _literal(operand) * (-1 if isinstance(node.op, ast.USub) else 1)
    elif isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(item) for item in node.elts]
    elif isinstance(node, ast.Dict):
        keys = [key.value if isinstance(key, ast.Constant) and isinstance(key.value, str) else None
                for key in node.keys]
        if None in keys:
            raise ValueError("dict keys must be strings")
        return {key: _literal(value) for key, value in zip(keys, node.values, strict=True)}
    elif isinstance(node, ast.Name) and node.id in _NAMED_CONSTANTS:
        return _NAMED_CONSTANTS[node.id]
    raise ValueError("not a literal")


def _object_call(text: str, keys: tuple[str, ...], *, required: bool) -> ParsedToolCall | None:
    """A call from JSON object text; Python-dict spelling ('single quotes') is read too, as
    some Hermes-format models write it."""
    text = text.strip()
    try:
        item = json.loads(text)
    except ValueError:
        try:
            item = _literal(ast.parse(text, mode="eval").body)
        except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
            return None
    return _dict_call(item, keys, required=required)


def _dict_call(item: Any, keys: tuple[str, ...], *, required: bool) -> ParsedToolCall | None:
    """{"name": str, <one of keys>: object (or JSON text of one)} as a call, else None."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
        return None
    key = next((key for key in keys if key in item), None)
    if key is None:
        if required:
            return None
        arguments: Any = {}
    else:
        arguments = item[key]
    if isinstance(arguments, str):  # arguments already written as JSON text
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ParsedToolCall(item["name"], json.dumps(arguments, ensure_ascii=False))


def _unwrapped(text: str) -> str:
    text = text.strip()
    for tag in (PYTHON_TAG, PYTHON_START):
        if text.startswith(tag):
            text = text[len(tag):]
    if text.endswith(PYTHON_END):
        text = text[:-len(PYTHON_END)]
    return text.strip()


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _partial_tag(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `tag`."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


TOOL_PARSERS: dict[str, type[ToolParser]] = {
    parser.name: parser for parser in (HermesToolParser, Llama3JsonToolParser, PythonicToolParser)
}

# Chat-template marks of each format, checked in this order.
_PYTHONIC_MARKS = re.compile(r"\[func_name\d*\(|tool_call\.name\s*\+\s*['\"]\(")
_QWEN3_CODER_MARK = "<function="  # XML calls inside <tool_call>: a format none of these parsers reads


def tool_parser_for_template(chat_template: str | None) -> str | None:
    """`auto`: the parser a chat template's tool-call format needs, or None when it has none
    (or one no parser here reads)."""
    if not chat_template:
        return None
    if _PYTHONIC_MARKS.search(chat_template):
        return "pythonic"
    if HERMES_START in chat_template:
        return None if _QWEN3_CODER_MARK in chat_template else "hermes"
    if PYTHON_TAG in chat_template or PYTHON_START in chat_template:
        return "llama3_json"
    if "ipython" in chat_template and '"parameters"' in chat_template:  # Llama 3.2 JSON templates
        return "llama3_json"
    return None


def make_tool_parser(name: str) -> ToolParser:
    try:
        return TOOL_PARSERS[name]()
    except KeyError:
        raise ValueError(f"Unknown tool parser '{name}'; known: {sorted(TOOL_PARSERS)}") from None
