"""From generated tokens (text_stream.TokenEntry) to OpenAI's log-probability objects: chat's
`logprobs.content`, and the completions' parallel lists with each token's offset in the text.
A token's text is its share of the choice's text, so the tokens spell the text."""

from __future__ import annotations

from collections.abc import Sequence

from contract.logprobs import (
    MIN_LOGPROB,
    ChatLogprobs,
    ChatTokenLogprob,
    CompletionLogprobs,
    TopLogprob,
)

from .text_stream import TokenEntry


def chat_logprobs(entries: Sequence[TokenEntry] | None) -> ChatLogprobs | None:
    """None when the request asked for no log-probabilities (the event carries no entries)."""
    if entries is None:
        return None
    return ChatLogprobs(content=[
        ChatTokenLogprob(token=entry.text, logprob=_finite(entry.logprob), bytes=_bytes(entry.text),
                         top_logprobs=[TopLogprob(token=text, logprob=_finite(value), bytes=_bytes(text))
                                       for text, value in entry.top])
        for entry in entries
    ])


def completion_logprobs(entries: Sequence[TokenEntry] | None, text_offset: int = 0) -> CompletionLogprobs | None:
    """`text_offset`: where the first entry's text starts in the choice's text. Each token's
    top_logprobs holds its own log-probability first, then its alternatives', by their text."""
    if entries is None:
        return None
    offsets = []
    for entry in entries:
        offsets.append(text_offset)
        text_offset += len(entry.text)
    return CompletionLogprobs(
        tokens=[entry.text for entry in entries],
        token_logprobs=[_finite(entry.logprob) for entry in entries],
        top_logprobs=[{entry.text: _finite(entry.logprob), **{text: _finite(value) for text, value in entry.top}}
                      for entry in entries],
        text_offset=offsets,
    )


class ChatStreamLogprobs:
    """A chat stream's entries not sent yet, per choice: they go with the choice's next chunk (a
    tool-call or reasoning parser may hold text back, and an end token has no text)."""

    def __init__(self, wanted: bool):
        self._wanted = wanted
        self._waiting: dict[int, list[TokenEntry]] = {}

    def add(self, choice: int, entries: Sequence[TokenEntry] | None) -> None:
        if entries:
            self._waiting.setdefault(choice, []).extend(entries)

    def take(self, choice: int) -> ChatLogprobs | None:
        entries = self._waiting.pop(choice, None)
        return chat_logprobs(entries) if self._wanted and entries else None


class CompletionOffsets:
    """A completions stream's log-probabilities, chunk by chunk: each choice's text_offset goes
    on from where its last chunk's text ended."""

    def __init__(self):
        self._next: dict[int, int] = {}

    def logprobs(self, choice: int, entries: Sequence[TokenEntry] | None) -> CompletionLogprobs | None:
        if entries is None:
            return None
        start = self._next.get(choice, 0)
        self._next[choice] = start + sum(len(entry.text) for entry in entries)
        return completion_logprobs(entries, start)


def _finite(logprob: float) -> float:
    return max(logprob, MIN_LOGPROB)  # -inf has no JSON form


def _bytes(text: str) -> list[int]:
    return list(text.encode("utf-8"))
