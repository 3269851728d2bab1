"""Log-probabilities through the text-generation task with a scripted engine: whole and streamed
chat and completions carry one entry per token, the tokens spell the text, a stream's chunks add
up to the whole response, and a request that asks for none gets none."""

from __future__ import annotations

import asyncio

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from contract.engine import TokenDelta, TokenLogprob
from contract.protocol import ChatCompletionRequest, CompletionRequest
from deployments.tasks.text_generation import TextGenerationTask
from tests.tiny_models import CHATML_TEMPLATE

TEXT = "hello world and more"


class ScriptedEngine:
    """Generates TEXT's tokens; the i-th token's log-probability is -(i + 1) / 10, its second
    likeliest alternative the token after it."""

    name, device = "scripted", "cpu"
    supports_logit_bias = supports_structured_output = False
    why_unstructured = "scripted"
    max_top_logprobs = 2

    def __init__(self, ids: list[int]):
        self.ids = ids

    async def generate(self, prompt_ids, params):
        for i, token in enumerate(self.ids):
            value = -(i + 1) / 10
            logprob = TokenLogprob(value, ((token, value), (token + 1, value - 1))[: params.logprobs])
            yield TokenDelta([token], "length" if i == len(self.ids) - 1 else None,
                             None if params.logprobs is None else [logprob])

    def running(self) -> int:
        return 1


@pytest.fixture(scope="module")
def task() -> TextGenerationTask:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([TEXT] * 20, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>")
    tokenizer.chat_template = CHATML_TEMPLATE
    engine = ScriptedEngine(backend.encode(TEXT).ids)
    return TextGenerationTask("m", tokenizer, engine, max_model_len=256, default_max_tokens=16)


def _chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                                 "temperature": 0, **fields})


def _collect(stream) -> list:
    async def run():
        return [chunk async for chunk in stream]

    return asyncio.run(run())


def test_a_chat_response_has_an_entry_per_token_that_spells_the_text(task):
    response = asyncio.run(task.chat(_chat(logprobs=True, top_logprobs=2)))
    choice = response.choices[0]
    content = choice.logprobs.content
    assert "".join(entry.token for entry in content) == choice.message.content == TEXT
    assert len(content) == response.usage.completion_tokens
    assert [entry.logprob for entry in content] == pytest.approx([-(i + 1) / 10 for i in range(len(content))])
    assert [len(entry.top_logprobs) for entry in content] == [2] * len(content)
    assert content[1].top_logprobs[0].token == content[1].token  # the sampled token reads as in the text


def test_a_chat_stream_carries_the_same_entries_in_its_chunks(task):
    whole = asyncio.run(task.chat(_chat(logprobs=True))).choices[0].logprobs.content
    chunks = _collect(task.chat_stream(_chat(logprobs=True, stream=True)))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].logprobs is None
    streamed = [entry for chunk in chunks if chunk.choices[0].logprobs for entry in chunk.choices[0].logprobs.content]
    assert streamed == whole
    for chunk in chunks:  # each chunk's entries spell that chunk's text
        if chunk.choices[0].logprobs:
            assert "".join(e.token for e in chunk.choices[0].logprobs.content) == chunk.choices[0].delta.content


def test_completions_give_text_offsets_whole_and_streamed(task):
    request = {"model": "m", "prompt": "hi", "logprobs": 1}
    whole = asyncio.run(task.complete(CompletionRequest.model_validate(request))).choices[0]
    assert "".join(whole.logprobs.tokens) == whole.text == TEXT
    assert [whole.text[offset:].startswith(token) for token, offset in
            zip(whole.logprobs.tokens, whole.logprobs.text_offset, strict=True)] == [True] * len(whole.logprobs.tokens)
    assert all(list(top) == [token] for token, top in zip(whole.logprobs.tokens, whole.logprobs.top_logprobs,
                                                          strict=True))
    chunks = _collect(task.complete_stream(CompletionRequest.model_validate({**request, "stream": True})))
    offsets = [offset for chunk in chunks if chunk.choices[0].logprobs for offset in chunk.choices[0].logprobs.text_offset]
    assert offsets == whole.logprobs.text_offset


def test_no_logprobs_asked_none_given(task):
    assert asyncio.run(task.chat(_chat())).choices[0].logprobs is None
    assert all(chunk.choices[0].logprobs is None for chunk in _collect(task.chat_stream(_chat(stream=True))))
    completion = asyncio.run(task.complete(CompletionRequest.model_validate({"model": "m", "prompt": "hi"})))
    assert completion.choices[0].logprobs is None
