"""/v1/embeddings on OpenVINO and torch encoders, checked against a reference computed here."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

SENTENCES = ["Ray Serve runs models.", "The capital of France is Paris.", "A quick brown fox jumps."]


def reference(model_dir, texts):
    """Mean pooling over the attention mask, then L2 normalisation (the sentence-transformers recipe)."""
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=1).numpy()


def cosine(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("model,key", [("tiny-bert", "bert"), ("tiny-bert-torch", "bert_plain")])
def test_vectors_match_reference_pooling(server, model, key):
    response = server.openai().embeddings.create(model=model, input=SENTENCES)
    expected = reference(server.models[key], SENTENCES)
    assert response.object == "list"
    assert [d.index for d in response.data] == [0, 1, 2]
    for data, want in zip(response.data, expected, strict=True):
        assert len(data.embedding) == 32
        assert cosine(data.embedding, want) >= 0.9999
        assert abs(np.linalg.norm(data.embedding) - 1.0) < 1e-4
    tokenizer = AutoTokenizer.from_pretrained(str(server.models[key]))
    assert response.usage.prompt_tokens == sum(len(tokenizer(s)["input_ids"]) for s in SENTENCES)
    assert response.usage.total_tokens == response.usage.prompt_tokens


def test_single_string_and_base64(server):
    with server.http() as http:
        floats = http.post("/v1/embeddings", json={"model": "tiny-bert", "input": SENTENCES[0]}).json()
        encoded = http.post(
            "/v1/embeddings", json={"model": "tiny-bert", "input": SENTENCES[0], "encoding_format": "base64"}
        ).json()
    decoded = np.frombuffer(base64.b64decode(encoded["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, floats["data"][0]["embedding"], rtol=1e-6)
    assert floats["data"][0]["object"] == "embedding"


def test_token_ids_equal_text(server):
    tokenizer = AutoTokenizer.from_pretrained(str(server.models["bert"]))
    ids = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in SENTENCES[:2]]
    client = server.openai()
    by_text = client.embeddings.create(model="tiny-bert", input=SENTENCES[:2])
    by_ids = client.embeddings.create(model="tiny-bert", input=ids)
    one = client.embeddings.create(model="tiny-bert", input=ids[0])
    for a, b in zip(by_text.data, by_ids.data, strict=True):
        assert cosine(a.embedding, b.embedding) > 0.99999
    assert cosine(one.data[0].embedding, by_text.data[0].embedding) > 0.99999
    assert by_ids.usage.prompt_tokens == by_text.usage.prompt_tokens


def test_dimensions_truncates_and_renormalises_where_supported(server):
    client = server.openai()
    full = client.embeddings.create(model="tiny-bert", input=SENTENCES[0]).data[0].embedding
    short = client.embeddings.create(model="tiny-bert", input=SENTENCES[0], dimensions=8).data[0].embedding
    assert len(short) == 8
    want = np.asarray(full[:8]) / np.linalg.norm(full[:8])
    np.testing.assert_allclose(short, want, atol=1e-5)


def test_dimensions_is_a_400_where_unsupported(server):
    from openai import BadRequestError

    with pytest.raises(BadRequestError) as error:
        server.openai().embeddings.create(model="tiny-bert-torch", input="x", dimensions=8)
    assert error.value.status_code == 400
    assert error.value.body["param"] == "dimensions"


def test_concurrent_requests_are_batched_and_match_sequential(server):
    client = server.async_openai()
    texts = [f"sentence number {i} about Paris" for i in range(24)]

    async def run():
        return await asyncio.gather(*(client.embeddings.create(model="tiny-bert", input=t) for t in texts))

    concurrent = asyncio.run(run())
    sequential = server.openai().embeddings.create(model="tiny-bert", input=texts)
    for single, data in zip(concurrent, sequential.data, strict=True):
        assert cosine(single.data[0].embedding, data.embedding) > 0.99999


def test_more_inputs_than_batch_size(server):
    texts = [f"input {i}" for i in range(40)]  # max_batch_size is 16: three chunks
    response = server.openai().embeddings.create(model="tiny-bert", input=texts)
    assert [d.index for d in response.data] == list(range(40))
    single = server.openai().embeddings.create(model="tiny-bert", input=texts[37])
    assert cosine(single.data[0].embedding, response.data[37].embedding) > 0.99999


def test_concurrent_requests_each_keep_their_own_answer_and_a_bad_one_fails_alone(server):
    """32 requests at once, batched together in the model replica: each still gets its own
    vectors and token counts, and one whose input is too long fails alone."""
    texts = [f"concurrent sentence {i} " + "about Paris " * (i % 4) for i in range(32)]
    fresh = {"Cache-Control": "no-cache"}  # every answer from the model, none from the response cache
    alone = {t: server.openai().embeddings.create(model="tiny-bert", input=t, extra_headers=fresh) for t in texts[:4]}
    too_long = "word " * 5000

    async def burst():
        client = server.async_openai(default_headers=fresh)  # one per event loop
        return await asyncio.gather(*(client.embeddings.create(model="tiny-bert", input=t) for t in texts))

    async def with_a_bad_one():
        client = server.async_openai(default_headers=fresh)
        return await asyncio.gather(*(client.embeddings.create(model="tiny-bert", input=t) for t in texts[:8]),
                                    client.embeddings.create(model="tiny-bert", input=["fine", too_long]),
                                    return_exceptions=True)

    answers = asyncio.run(burst())
    *fine, refused = asyncio.run(with_a_bad_one())
    import openai

    assert isinstance(refused, openai.BadRequestError), refused
    assert refused.body["param"] == "input" and "input[1]" in refused.body["message"]
    assert all(not isinstance(answer, Exception) for answer in fine), fine
    for text, answer in zip(texts, answers, strict=True):
        assert not isinstance(answer, Exception), answer
        assert len(answer.data) == 1 and answer.data[0].index == 0
        if text in alone:
            assert cosine(answer.data[0].embedding, alone[text].data[0].embedding) > 0.99999
            assert answer.usage.prompt_tokens == alone[text].usage.prompt_tokens
    sequential = server.openai().embeddings.create(model="tiny-bert", input=texts, extra_headers=fresh)
    assert sum(a.usage.prompt_tokens for a in answers) == sequential.usage.prompt_tokens
    for answer, data in zip(answers, sequential.data, strict=True):
        assert cosine(answer.data[0].embedding, data.embedding) > 0.99999
