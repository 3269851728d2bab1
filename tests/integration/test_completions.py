"""/v1/completions: string, list and token-id prompts, echo, n, streaming."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer


@pytest.fixture(scope="module")
def tokenizer(server):
    return AutoTokenizer.from_pretrained(str(server.models["llama"]))


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-llama-hf"])
def test_completion_usage_and_text(server, tokenizer, model):
    prompt = "The capital of France is"
    response = server.openai().completions.create(model=model, prompt=prompt, max_tokens=7, temperature=0)
    assert response.object == "text_completion"
    assert response.id.startswith("cmpl-")
    assert response.choices[0].finish_reason == "length"
    assert response.choices[0].text
    assert response.usage.prompt_tokens == len(tokenizer(prompt)["input_ids"])
    assert response.usage.completion_tokens == 7


def test_list_of_prompts_gives_choices_in_prompt_order(server):
    client = server.openai()
    prompts = ["The capital of France is", "Ray Serve runs"]
    singles = [client.completions.create(model="tiny-llama", prompt=p, max_tokens=6, temperature=0) for p in prompts]
    batch = client.completions.create(model="tiny-llama", prompt=prompts, max_tokens=6, temperature=0, n=2)
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    assert [c.text for c in batch.choices] == [singles[0].choices[0].text] * 2 + [singles[1].choices[0].text] * 2
    assert batch.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles)
    assert batch.usage.completion_tokens == 24


def test_token_id_prompt_equals_text_prompt(server, tokenizer):
    client = server.openai()
    text = "Streaming responses send tokens"
    ids = tokenizer(text)["input_ids"]
    by_text = client.completions.create(model="tiny-llama", prompt=text, max_tokens=6, temperature=0)
    by_ids = client.completions.create(model="tiny-llama", prompt=ids, max_tokens=6, temperature=0)
    by_id_lists = client.completions.create(model="tiny-llama", prompt=[ids, ids], max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert [c.text for c in by_id_lists.choices] == [by_text.choices[0].text] * 2


def test_echo_prepends_the_prompt(server):
    client = server.openai()
    prompt = "A quick brown fox"
    plain = client.completions.create(model="tiny-llama", prompt=prompt, max_tokens=5, temperature=0)
    echoed = client.completions.create(model="tiny-llama", prompt=prompt, max_tokens=5, temperature=0, echo=True)
    assert echoed.choices[0].text == prompt + plain.choices[0].text


def test_completion_stream_with_echo_and_usage(server):
    client = server.openai()
    prompt = "Embeddings map sentences"
    full = client.completions.create(model="tiny-llama", prompt=prompt, max_tokens=8, temperature=0)
    chunks = list(
        client.completions.create(
            model="tiny-llama", prompt=prompt, max_tokens=8, temperature=0, echo=True, stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == prompt + full.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].usage.completion_tokens == 8
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


def test_completion_stop_string(server):
    client = server.openai()
    text = client.completions.create(model="tiny-llama", prompt="Numbers like", max_tokens=20, temperature=0).choices[0].text
    stop = text[8:10]
    response = client.completions.create(model="tiny-llama", prompt="Numbers like", max_tokens=20, temperature=0, stop=stop)
    assert response.choices[0].text == text[: text.index(stop)]
    assert response.choices[0].finish_reason == "stop"
