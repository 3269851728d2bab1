"""The output a `required` tool_choice forces, a JSON array of {"name", "parameters"} objects,
read as it streams: each call's name as soon as it is written, then its arguments as fragments
of the model's own text, as OpenAI streams them. The grammar writes "name" first (the schema's
order); an element written otherwise is given out whole once complete."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

# An element's start up to its arguments: {"name": "...", "parameters":
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"parameters"\s*:\s*')


@dataclass(frozen=True)
class CallPiece:
    """One step of a call: its name (the call opens), or a fragment of its arguments."""

    index: int
    name: str | None = None
    arguments: str = ""


class CallArrayReader:
    def __init__(self):
        self._buffer = ""
        self._pos = 0  # what is read of the buffer
        self._opened = False  # past the array's "["
        self._calls = 0
        self._in_arguments = False  # inside a call's arguments value
        self._close_pending = False  # the "}" after a call's arguments is still to read
        self._depth = 0
        self._in_string = self._escaped = False
        self.complete: list[int] = []  # the calls whose element closed

    def feed(self, text: str) -> list[CallPiece]:
        self._buffer += text
        pieces: list[CallPiece] = []
        while self._step(pieces):
            pass
        return pieces

    def _step(self, pieces: list[CallPiece]) -> bool:
        """Read what can be read; False when more text is needed."""
        if self._in_arguments:
            return self._arguments(pieces)
        if self._close_pending:
            self._skip(" \t\r\n")
            if self._pos >= len(self._buffer):
                return False
            self._close_pending = False
            if self._buffer[self._pos] == "}":
                self._pos += 1
            return True
        self._skip(" \t\r\n" + ("," if self._opened else ""))
        rest = self._buffer[self._pos:]
        if not rest:
            return False
        if not self._opened:
            if rest[0] != "[":
                return False
            self._opened, self._pos = True, self._pos + 1
            return True
        if rest[0] == "]":
            return False
        if head := _HEAD.match(rest):
            pieces.append(CallPiece(self._calls, name=json.loads(head.group(1))))
            self._pos += head.end()
            self._in_arguments, self._depth = True, 0
            return True
        try:  # the head still being written, or another key order: the whole element once complete
            item, end = json.JSONDecoder().raw_decode(self._buffer, self._pos)
        except ValueError:
            return False
        self._pos = end
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            pieces.append(CallPiece(self._calls, name=item["name"],
                                    arguments=json.dumps(item.get("parameters", {}), ensure_ascii=False)))
            self.complete.append(self._calls)
            self._calls += 1
        return True

    def _arguments(self, pieces: list[CallPiece]) -> bool:
        if self._depth == 0:
            self._skip(" \t\r\n")
            if self._buffer[self._pos:self._pos + 1] not in ("{", "["):  # not an object: given out whole
                try:
                    value, end = json.JSONDecoder().raw_decode(self._buffer, self._pos)
                except ValueError:
                    return False
                pieces.append(CallPiece(self._calls, arguments=json.dumps(value, ensure_ascii=False)))
                self._pos, self._in_arguments, self._close_pending = end, False, True
                self.complete.append(self._calls)
                self._calls += 1
                return True
        start = self._pos
        while self._pos < len(self._buffer):
            char = self._buffer[self._pos]
            self._pos += 1
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif char == "\\":
                    self._escaped = True
                elif char == '"':
                    self._in_string = False
            elif char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            elif char in "}]":
                self._depth -= 1
                if self._depth == 0:  # the arguments value is complete
                    pieces.append(CallPiece(self._calls, arguments=self._buffer[start:self._pos]))
                    self._in_arguments, self._close_pending = False, True
                    self.complete.append(self._calls)
                    self._calls += 1
                    return True
        if self._pos > start:
            pieces.append(CallPiece(self._calls, arguments=self._buffer[start:self._pos]))
        return False

    def _skip(self, characters: str) -> None:
        while self._pos < len(self._buffer) and self._buffer[self._pos] in characters:
            self._pos += 1
