"""From engine token deltas to client text: incremental detokenisation and stop strings.

Shared by every generation engine, so stop strings behave the same on OpenVINO and
transformers. Stop strings are matched on text, not tokens (a stop string can start or end
inside a token); text that might be the beginning of a stop string is held back until the
next delta settles it, so a client never sees any part of a stop string. When log-probabilities
are asked for, each token gets its own text, and an event carries the entries of the tokens whose
text it carries (their texts spell the event's text).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from tokenizers import Tokenizer

from contract.engine import GenerationEngine, SamplingParams, TokenDelta

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
class TokenEntry:
    """One generated token for log-probabilities: its id, its share of the text, its
    log-probability, and the likeliest tokens' (text, log-probability), likeliest first."""

    token_id: int
    text: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class TextEvent:
    text: str
    completion_tokens: int  # cumulative for this sequence
    finish_reason: str | None = None
    tokens: tuple[TokenEntry, ...] | None = None  # None: no log-probabilities were asked for


class _TokenEntries:
    """Per-token text and the entries waiting for their text to go out: an entry is released
    once the text sent so far covers it; a stop string cuts the entry it falls in and drops
    the ones after it."""

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._waiting: list[tuple[int, TokenEntry]] = []  # (where its text starts, entry)
        self._produced = 0  # characters of text produced so far
        self._names: dict[int, str] = {}

    def feed(self, detokenizer: IncrementalDetokenizer, delta: TokenDelta, last: bool) -> str:
        texts = [detokenizer.feed([token]) for token in delta.token_ids]
        tail = detokenizer.flush() if last else ""
        if texts:  # what the end releases (a character cut short) is the last token's
            texts[-1], tail = texts[-1] + tail, ""
        for token, text, logprob in zip(delta.token_ids, texts, delta.logprobs or (), strict=True):
            # The sampled token among the alternatives reads as it does in the text.
            top = tuple((text if alternative == token else self._name(alternative), value)
                        for alternative, value in logprob.top)
            self._waiting.append((self._produced, TokenEntry(token, text, logprob.logprob, top)))
            self._produced += len(text)
        self._produced += len(tail)
        return "".join(texts) + tail

    def take(self, sent: int, cut: bool = False) -> tuple[TokenEntry, ...]:
        """The entries whose text lies within the first `sent` characters; with `cut`, the text
        ends there: the entry that straddles it keeps its part, the later ones are dropped."""
        out = [entry for start, entry in self._waiting if start + len(entry.text) <= sent]
        if cut:
            out += [TokenEntry(e.token_id, e.text[: sent - start], e.logprob, e.top)
                    for start, e in self._waiting if start < sent < start + len(e.text)]
            self._waiting = []
        else:
            self._waiting = [(start, e) for start, e in self._waiting if start + len(e.text) > sent]
        return tuple(out)

    def _name(self, token: int) -> str:
        if token not in self._names:
            self._names[token] = self._tokenizer.decode([token], skip_special_tokens=False)
        return self._names[token]


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
    entries = _TokenEntries(tokenizer) if params.logprobs is not None else None
    tokens = sent = 0  # sent: characters of text that went out, or go with this event
    pending_text, pending_tokens, sent_first = "", 0, False
    deltas = engine.generate(prompt_ids, params)

    def event(finish: str | None = None, cut: bool = False) -> TextEvent:
        return TextEvent(pending_text, tokens, finish, None if entries is None else entries.take(sent, cut))

    try:
        async for delta in deltas:
            tokens += len(delta.token_ids)
            pending_tokens += len(delta.token_ids)
            last = delta.finish_reason is not None
            if entries is not None:
                text = entries.feed(detokenizer, delta, last)
            else:
                text = detokenizer.feed(delta.token_ids) + (detokenizer.flush() if last else "")
            if matcher is not None and tokens >= options.min_tokens:
                text, stopped = matcher.feed(text)
                if stopped:
                    pending_text += text
                    sent += len(text)
                    yield event("stop", cut=True)
                    return  # closing `deltas` below cancels the sequence in the engine
                if last:
                    text += matcher.flush()
            pending_text += text
            sent += len(text)
            if last:
                yield event(delta.finish_reason)
                return
            if pending_text and (not sent_first or pending_tokens >= chunk_tokens()):
                yield event()
                pending_text, pending_tokens, sent_first = "", 0, True
    finally:
        await deltas.aclose()
