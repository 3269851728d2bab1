"""From engine token deltas to client text: incremental detokenisation and stop strings.

Shared by every generation engine, so stop strings behave the same on OpenVINO and
transformers. Stop strings are matched on text, not tokens (a stop string can start or end
inside a token); text that might be the beginning of a stop string is held back until the
next delta settles it, so a client never sees any part of a stop string.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from tokenizers import Tokenizer

from contract.engine import GenerationEngine, SamplingParams

# Prompt tokens given to the decoder as left context: enough for tokenizers whose first
# token's leading space depends on what precedes it (SentencePiece/Metaspace).
_CONTEXT_TOKENS = 4


class IncrementalDetokenizer:
    """Text for each delta, emitting only complete characters (the vLLM/TGI offset method).

    Decoding a short window of recent tokens, rather than the whole sequence, keeps each step
    cheap; the window starts a few prompt tokens back because a token's leading space can
    depend on what precedes it (SentencePiece/Metaspace). Text ending in U+FFFD is a
    multi-byte character cut in half: it is held back until the next token completes it,
    and `flush` releases whatever is left when the sequence ends.
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int], skip_special_tokens: bool = True):
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._ids = list(prompt_ids[-_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special_tokens)

    def feed(self, token_ids: Sequence[int]) -> str:
        self._ids.extend(token_ids)
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        text = self._decode(self._ids[self._prefix_offset :])
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
            return text[len(prefix) :]
        return ""

    def flush(self) -> str:
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        text = self._decode(self._ids[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self._ids)
        return text[len(prefix) :]


class StopStringMatcher:
    def __init__(self, stops: Sequence[str], include_stop: bool = False):
        self._stops = [s for s in stops if s]
        self._include_stop = include_stop
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text that is safe to emit now, whether a stop string was reached); the text
        ends before the first stop string, or with it when `include_stop`."""
        buffer = self._held + text
        hits = [(i, len(s)) for i, s in ((buffer.find(s), s) for s in self._stops) if i >= 0]
        if hits:
            self._held = ""
            start, length = min(hits)
            return buffer[: start + length if self._include_stop else start], True
        keep = self._longest_partial_suffix(buffer)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held

    def _longest_partial_suffix(self, buffer: str) -> int:
        best = 0
        for stop in self._stops:
            for length in range(min(len(stop) - 1, len(buffer)), best, -1):
                if buffer.endswith(stop[:length]):
                    best = length
                    break
        return best


@dataclass(frozen=True)
class TextOptions:
    """What a request asks of its text: stop strings (the stop that ended it kept when
    `include_stop`), special tokens left out or kept, and no stop string before `min_tokens`."""

    stop: tuple[str, ...] = ()
    include_stop: bool = False
    skip_special_tokens: bool = True
    min_tokens: int = 0


@dataclass(frozen=True)
class TextEvent:
    text: str
    completion_tokens: int  # cumulative for this sequence
    finish_reason: str | None = None


async def generate_text(
    engine: GenerationEngine,
    tokenizer: Tokenizer,
    prompt_ids: list[int],
    params: SamplingParams,
    options: TextOptions = TextOptions(),
    chunk_tokens: Callable[[], int] = lambda: 1,
) -> AsyncIterator[TextEvent]:
    """One sequence as text events; the last one carries finish_reason.

    The first text goes out at once; after that an event is sent every `chunk_tokens()`
    tokens (as vLLM's --stream-interval): each event costs a trip through Ray and HTTP,
    and on a small machine that per-event cost competes with the engine for the cores.
    Stop strings are looked for only in the text of tokens past `min_tokens`, as vLLM does.
    """
    detokenizer = IncrementalDetokenizer(tokenizer, prompt_ids, options.skip_special_tokens)
    matcher = StopStringMatcher(options.stop, options.include_stop) if options.stop else None
    tokens = 0
    pending_text, pending_tokens, sent_first = "", 0, False
    deltas = engine.generate(prompt_ids, params)
    try:
        async for delta in deltas:
            tokens += len(delta.token_ids)
            pending_tokens += len(delta.token_ids)
            text = detokenizer.feed(delta.token_ids)
            if delta.finish_reason is not None:
                text += detokenizer.flush()
            if matcher is not None and tokens >= options.min_tokens:
                text, stopped = matcher.feed(text)
                if stopped:
                    yield TextEvent(pending_text + text, tokens, "stop")
                    return  # closing `deltas` below cancels the sequence in the engine
                if delta.finish_reason is not None:
                    text += matcher.flush()
            pending_text += text
            if delta.finish_reason is not None:
                yield TextEvent(pending_text, tokens, delta.finish_reason)
                return
            if pending_text and (not sent_first or pending_tokens >= chunk_tokens()):
                yield TextEvent(pending_text, tokens)
                pending_text, pending_tokens, sent_first = "", 0, True
    finally:
        await deltas.aclose()
