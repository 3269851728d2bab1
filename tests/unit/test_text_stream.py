"""Detokenisation and stop strings, shared by every generation engine."""

from __future__ import annotations

import asyncio

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from contract.engine import SamplingParams, TokenDelta, TokenLogprob
from deployments.text_stream import (
    IncrementalDetokenizer,
    StopStringMatcher,
    TextOptions,
    generate_text,
)


def test_stop_matcher_holds_back_possible_prefixes():
    matcher = StopStringMatcher(["STOP"])
    assert matcher.feed("hello ST") == ("hello ", False)
    assert matcher.feed("ill going") == ("STill going", False)
    assert matcher.feed(" S") == (" ", False)
    assert matcher.feed("TOP and more") == ("", True)


def test_stop_matcher_picks_the_earliest_of_several_stops():
    matcher = StopStringMatcher(["world", "lo w"])
    assert matcher.feed("hello world") == ("hel", True)


def test_stop_matcher_flush_releases_held_text():
    matcher = StopStringMatcher(["\n\n"])
    assert matcher.feed("line\n") == ("line", False)
    assert matcher.flush() == "\n"


@pytest.fixture(scope="module")
def byte_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    # A byte-level vocabulary: token id == byte value.
    tokenizer.add_tokens([])
    from tokenizers import trainers

    trainer = trainers.BpeTrainer(vocab_size=256, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(["x"], trainer)
    return tokenizer


def _ids(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text).ids


def test_detokenizer_holds_back_half_characters(byte_tokenizer):
    ids = _ids(byte_tokenizer, "héllo 😀!")
    detok = IncrementalDetokenizer(byte_tokenizer, [])
    pieces = [detok.feed([i]) for i in ids]
    assert "".join(pieces) + detok.flush() == "héllo 😀!"
    assert all("\ufffd" not in piece for piece in pieces)
    emoji_start = pieces.index("") if "" in pieces else None
    assert emoji_start is not None  # some tokens produced no text until the character completed


def test_detokenizer_flush_releases_an_unfinished_character(byte_tokenizer):
    ids = _ids(byte_tokenizer, "ok😀")[:-1]  # the emoji cut short
    detok = IncrementalDetokenizer(byte_tokenizer, [])
    text = "".join(detok.feed([i]) for i in ids)
    assert text == "ok"
    assert detok.flush() == "\ufffd"


class ScriptedEngine:
    """Yields a fixed token script; records whether the consumer closed it early."""

    name = "scripted"
    device = "cpu"

    def __init__(self, script: list[list[int]], finish: str = "length"):
        self.script = script
        self.finish = finish
        self.closed_early = False

    async def generate(self, prompt_ids, params):
        finished = False
        try:
            for i, ids in enumerate(self.script):
                last = i == len(self.script) - 1
                if last:
                    finished = True
                # A token's log-probability is minus its id, so a test can tell which token it is.
                logprobs = None if params.logprobs is None else [
                    TokenLogprob(-float(t), tuple((t + k, -float(t + k)) for k in range(params.logprobs))) for t in ids]
                yield TokenDelta(ids, self.finish if last else None, logprobs)
        finally:
            if not finished:
                self.closed_early = True


def _run(engine, tokenizer, stop, logprobs=None, chunk_tokens=1, **options):
    text = TextOptions(stop=tuple(stop or ()), **options)
    params = SamplingParams(max_tokens=100, logprobs=logprobs)

    async def collect():
        return [e async for e in generate_text(engine, tokenizer, [], params, text, lambda: chunk_tokens)]

    return asyncio.run(collect())


def test_generate_text_counts_tokens_and_finishes(byte_tokenizer):
    ids = _ids(byte_tokenizer, "hello world")
    engine = ScriptedEngine([[i] for i in ids])
    events = _run(engine, byte_tokenizer, None)
    assert "".join(e.text for e in events) == "hello world"
    assert events[-1].finish_reason == "length"
    assert events[-1].completion_tokens == len(ids)
    assert not engine.closed_early


def test_generate_text_stop_string_cancels_the_engine(byte_tokenizer):
    ids = _ids(byte_tokenizer, "hello world and more text")
    engine = ScriptedEngine([[i] for i in ids])
    events = _run(engine, byte_tokenizer, ["wor"])
    assert "".join(e.text for e in events) == "hello "
    assert events[-1].finish_reason == "stop"
    assert events[-1].completion_tokens == len(_ids(byte_tokenizer, "hello wor"))
    assert engine.closed_early  # the rest of the sequence was never generated


def test_generate_text_flushes_held_back_text_at_the_end(byte_tokenizer):
    ids = _ids(byte_tokenizer, "abc wo")
    engine = ScriptedEngine([[i] for i in ids], finish="stop")
    events = _run(engine, byte_tokenizer, ["world"])
    assert "".join(e.text for e in events) == "abc wo"
    assert events[-1].finish_reason == "stop"


def test_the_stop_string_is_kept_when_asked(byte_tokenizer):
    ids = _ids(byte_tokenizer, "hello world and more text")
    events = _run(ScriptedEngine([[i] for i in ids]), byte_tokenizer, ["wor", "and"], include_stop=True)
    assert "".join(e.text for e in events) == "hello wor" and events[-1].finish_reason == "stop"


def test_no_stop_string_ends_the_text_before_min_tokens(byte_tokenizer):
    ids = _ids(byte_tokenizer, "ab ab ab cd")
    events = _run(ScriptedEngine([[i] for i in ids]), byte_tokenizer, ["ab"], min_tokens=4)
    # The stop is looked for from the 4th token on: "ab " went out, the second "ab" ends it.
    assert "".join(e.text for e in events) == "ab " and events[-1].finish_reason == "stop"
    assert events[-1].completion_tokens == len(_ids(byte_tokenizer, "ab ab"))


def test_special_tokens_are_kept_when_asked(byte_tokenizer):
    byte_tokenizer.add_special_tokens(["<eos>"])
    special = byte_tokenizer.token_to_id("<eos>")
    ids = [*_ids(byte_tokenizer, "hi"), special]
    kept = _run(ScriptedEngine([[i] for i in ids]), byte_tokenizer, None, skip_special_tokens=False)
    skipped = _run(ScriptedEngine([[i] for i in ids]), byte_tokenizer, None)
    assert "".join(e.text for e in kept) == "hi<eos>" and "".join(e.text for e in skipped) == "hi"


# ----------------------------------------------------------------------------- log-probabilities


@pytest.fixture(scope="module")
def word_tokenizer() -> Tokenizer:
    """Byte-level BPE with whole words as tokens (" world" is one), so a stop string can fall
    inside a token."""
    from tokenizers import trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(["hello world and more text"] * 20, trainer)
    return tokenizer


def _spelled(event) -> str:
    return "".join(entry.text for entry in event.tokens)


@pytest.mark.parametrize("chunk_tokens", [1, 3])
def test_each_event_carries_the_tokens_that_spell_its_text(byte_tokenizer, chunk_tokens):
    ids = _ids(byte_tokenizer, "héllo 😀!")
    engine = ScriptedEngine([ids[:2], ids[2:3], ids[3:7], ids[7:]])
    events = _run(engine, byte_tokenizer, None, logprobs=0, chunk_tokens=chunk_tokens)
    assert "".join(e.text for e in events) == "héllo 😀!"
    assert all(_spelled(e) == e.text for e in events)
    entries = [entry for e in events for entry in e.tokens]
    assert [entry.token_id for entry in entries] == ids  # one entry per token, in order
    assert [entry.logprob for entry in entries] == [-float(t) for t in ids]
    assert sum(entry.text == "" for entry in entries) == 4  # the bytes of é and 😀 before their last


def test_no_logprobs_asked_no_entries(byte_tokenizer):
    events = _run(ScriptedEngine([[i] for i in _ids(byte_tokenizer, "hi")]), byte_tokenizer, None)
    assert all(e.tokens is None for e in events)


def test_alternatives_are_named_by_their_text(byte_tokenizer):
    ids = _ids(byte_tokenizer, "ab")
    (event,) = [e for e in _run(ScriptedEngine([ids]), byte_tokenizer, None, logprobs=2) if e.tokens]
    first = event.tokens[0]
    assert first.top == (("a", -float(ids[0])), (byte_tokenizer.decode([ids[0] + 1]), -float(ids[0] + 1)))


def test_text_held_back_for_a_stop_string_keeps_its_tokens_back_too(byte_tokenizer):
    ids = _ids(byte_tokenizer, "ab xy cd")
    events = _run(ScriptedEngine([[i] for i in ids]), byte_tokenizer, ["xyz"], logprobs=0)
    assert "".join(e.text for e in events) == "ab xy cd"
    assert all(_spelled(e) == e.text for e in events)
    assert [e.text for e in events][:3] == ["a", "b", " "]  # "x" waits: it may start "xyz"


def test_a_stop_string_cuts_the_token_it_starts_in_and_drops_the_rest(word_tokenizer):
    ids = _ids(word_tokenizer, "hello world and more text")
    assert len(ids) == 5  # whole words
    events = _run(ScriptedEngine([[i] for i in ids]), word_tokenizer, ["wor"], logprobs=0)
    assert "".join(e.text for e in events) == "hello " and events[-1].finish_reason == "stop"
    entries = [entry for e in events for entry in e.tokens]
    assert [entry.text for entry in entries] == ["hello", " "]  # " world" keeps what precedes the stop
    assert [entry.token_id for entry in entries] == ids[:2]


def test_a_kept_stop_string_keeps_its_tokens(word_tokenizer):
    ids = _ids(word_tokenizer, "hello world and more text")
    events = _run(ScriptedEngine([[i] for i in ids]), word_tokenizer, ["wor"], logprobs=0, include_stop=True)
    entries = [entry for e in events for entry in e.tokens]
    assert "".join(e.text for e in events) == "hello wor"
    assert [entry.text for entry in entries] == ["hello", " wor"]
