"""The rerank and text-classification tasks without Ray: what their claims() recognise, how
logits become scores, the wire models' validation, and the tasks themselves on tiny models
with the torch engine, compared with transformers' own text-classification pipeline.
(The integration tests compare the OpenVINO engine the same way.)"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from pydantic import ValidationError

from contract.config import ModelAppArgs
from contract.errors import APIError, validation_error_to_api_error
from contract.scoring_protocol import ClassificationRequest, RerankRequest, RerankResult
from deployments.sources import PreparedModel
from deployments.tasks import rerank, text_classification
from deployments.tasks.sequence_scoring import activation, apply_activation, label_names, num_labels
from tests.tiny_models import build_tiny_bert_classifier

LABELS = ["negative", "neutral", "positive"]
QUERY = "what is the capital of France"
DOCUMENTS = [
    "The capital of France is Paris.",
    "A quick brown fox jumps over the lazy dog.",
    "Ray Serve runs models as deployments.",
    "OpenVINO runs neural networks fast.",
    "Numbers like 0 1 2 3 appear in text.",
]
TORCH = SimpleNamespace(backend="transformers", device="cpu", dtype="float32")


# ----------------------------------------------------------------------------- claims and scores


def _config(architecture: str, **fields) -> dict:
    return {"architectures": [architecture], **fields}


@pytest.mark.parametrize(("config", "task"), [
    (_config("BertForSequenceClassification", id2label={"0": "LABEL_0"}), "rerank"),  # a CrossEncoder
    (_config("XLMRobertaForSequenceClassification", num_labels=1), "rerank"),
    (_config("BertForSequenceClassification", id2label={"0": "neg", "1": "pos"}), "text-classification"),
    (_config("DistilBertForSequenceClassification"), "text-classification"),  # no labels named: transformers' 2
    (_config("RobertaForSequenceClassification", num_labels=5), "text-classification"),
    (_config("BertModel"), None), (_config("LlamaForCausalLM"), None), (_config("BertForTokenClassification"), None),
    ({}, None),
])
def test_claims_split_sequence_classifiers_by_their_outputs(config, task):
    files = frozenset({"config.json"})
    assert rerank.claims(config, files) is (task == "rerank")
    assert text_classification.claims(config, files) is (task == "text-classification")


def test_scores_follow_transformers_pipeline_rules():
    assert activation({"id2label": {"0": "a", "1": "b"}}) == "softmax"
    assert activation({"num_labels": 1}) == "sigmoid"
    assert activation({"id2label": {"0": "a", "1": "b"}, "problem_type": "multi_label_classification"}) == "sigmoid"
    assert activation({"num_labels": 1, "problem_type": "regression"}) == "none"
    logits = np.array([[2.0, -1.0, 0.5]])
    softmax = apply_activation(logits, "softmax")
    assert np.allclose(softmax, np.exp(logits) / np.exp(logits).sum()) and softmax.sum() == pytest.approx(1.0)
    assert np.allclose(apply_activation(logits, "sigmoid"), 1 / (1 + np.exp(-logits)))
    assert np.array_equal(apply_activation(logits, "none"), logits)
    assert apply_activation(np.array([[1000.0, 0.0]]), "softmax").tolist() == [[1.0, 0.0]]  # no overflow


def test_labels_come_from_id2label_in_class_order():
    assert label_names({"id2label": {"1": "pos", "0": "neg"}}) == ["neg", "pos"]
    assert label_names({"num_labels": 3}) == ["LABEL_0", "LABEL_1", "LABEL_2"]
    assert num_labels({}) == 2


# ----------------------------------------------------------------------------- the wire models


@pytest.mark.parametrize(("body", "param"), [
    ({"query": "q", "documents": []}, "documents"),
    ({"query": "q", "documents": ["a", ""]}, "documents[1]"),
    ({"query": "", "documents": ["a"]}, "query"),
    ({"query": "q", "documents": ["a"], "top_n": 0}, "top_n"),
    ({"query": "q", "documents": ["a"], "return_documents": "yes"}, "return_documents"),
    ({"query": "q", "documents": [{"text": "a"}]}, "documents[0]"),
])
def test_rerank_requests_are_validated(body, param):
    with pytest.raises(ValidationError) as error:
        RerankRequest.model_validate({"model": "m", **body})
    as_fastapi_reports_them = [{**e, "loc": ("body", *e["loc"])} for e in error.value.errors()]
    assert validation_error_to_api_error(as_fastapi_reports_them).param == param


def test_rerank_wire_shape():
    request = RerankRequest.model_validate({"model": "m", "query": "q", "documents": ["a"], "top_n": 2.0, "rank_fields": []})
    assert request.top_n == 2 and request.return_documents is False and request.unknown_fields() == ["rank_fields"]
    assert RerankResult(index=0, relevance_score=0.5).model_dump() == {"index": 0, "relevance_score": 0.5}
    with_text = RerankResult.model_validate({"index": 1, "relevance_score": 0.25, "document": {"text": "a"}})
    assert with_text.model_dump() == {"index": 1, "relevance_score": 0.25, "document": {"text": "a"}}


def test_classification_requests_take_one_text_or_a_list():
    assert ClassificationRequest(model="m", input="a").inputs() == ["a"]
    assert ClassificationRequest(model="m", input=["a", "b"]).inputs() == ["a", "b"]
    for bad in ("", [], [""], [[1, 2]], 5):
        with pytest.raises(ValidationError):
            ClassificationRequest.model_validate({"model": "m", "input": bad})


# ----------------------------------------------------------------------------- the tasks


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scoring-models")
    return {"reranker": build_tiny_bert_classifier(root / "reranker"),
            "classifier": build_tiny_bert_classifier(root / "classifier", labels=LABELS, seed=1)}


def _load(module, path: Path, task: str, **args):
    return module.load("m", ModelAppArgs(source=str(path), task=task, backend="transformers", **args),
                       PreparedModel(hf_dir=path), TORCH)


def _served(coroutine_of_task):
    """Run one coroutine on a fresh loop (a @serve.batch queue belongs to the loop it started on)."""
    return asyncio.run(coroutine_of_task())


def _pipeline(path: Path):
    from transformers import pipeline

    return pipeline("text-classification", model=str(path), top_k=None)


def test_rerank_matches_the_pipeline_and_ranks(models):
    scored = _pipeline(models["reranker"])
    # The documents go in from the least to the most relevant (as the pipeline scores them), so
    # an answer that is not sorted keeps that order and fails. The tiny tokenizer's vocabulary
    # differs from run to run (its trainer breaks frequency ties in hash order), so the scores
    # and their order do too.
    documents = sorted(DOCUMENTS, key=lambda doc: scored({"text": QUERY, "text_pair": doc})[0]["score"])
    expected = [scored({"text": QUERY, "text_pair": doc})[0]["score"] for doc in documents]

    async def run():
        task = _load(rerank, models["reranker"], "rerank")
        every = await task.rerank(RerankRequest(model="m", query=QUERY, documents=documents))
        top = await task.rerank(RerankRequest(model="m", query=QUERY, documents=documents, top_n=2, return_documents=True))
        return task, every, top

    task, every, top = _served(run)
    scores = {result.index: result.relevance_score for result in every.results}
    assert sorted(scores) == list(range(len(documents)))
    assert max(abs(scores[i] - expected[i]) for i in range(len(documents))) < 1e-4
    assert max(expected) - min(expected) > 0.05  # spread enough for the order to mean something
    ranked = [r.relevance_score for r in every.results]
    assert ranked == sorted(ranked, reverse=True)  # most relevant first
    assert [(r.index, r.document.text) for r in top.results] == [(i, documents[i]) for i in (r.index for r in every.results[:2])]
    assert all(r.document is None for r in every.results)
    pairs = task.tokenizer([QUERY] * len(documents), documents)["input_ids"]
    assert every.usage.input_tokens == [len(ids) for ids in pairs] and every.usage.total_tokens == sum(map(len, pairs))


def test_rerank_refuses_too_many_documents_and_a_query_longer_than_the_context(models):
    async def run():
        task = _load(rerank, models["reranker"], "rerank", max_rerank_documents=3)
        errors = []
        for request in (RerankRequest(model="m", query=QUERY, documents=DOCUMENTS),
                        RerankRequest(model="m", query="fox " * 130, documents=["a"])):
            with pytest.raises(APIError) as error:
                await task.rerank(request)
            errors.append(error.value)
        long_document = "the fox jumps " * 100  # truncated to fit, as Cohere and Jina do
        fits = await task.rerank(RerankRequest(model="m", query=QUERY, documents=[long_document]))
        return task, errors, fits, long_document

    task, (too_many, too_long), fits, long_document = _served(run)
    assert too_many.status_code == 400 and too_many.param == "documents" and "at most 3" in too_many.message
    assert too_long.status_code == 400 and too_long.param == "query" and too_long.code == "context_length_exceeded"
    assert fits.usage.total_tokens == task.max_model_len == 128
    expected = _pipeline(models["reranker"])({"text": QUERY, "text_pair": long_document}, truncation="only_second")
    assert fits.results[0].relevance_score == pytest.approx(expected[0]["score"], abs=1e-4)


def test_classification_matches_the_pipeline_for_every_label(models):
    expected = _pipeline(models["classifier"])(DOCUMENTS)

    async def run():
        task = _load(text_classification, models["classifier"], "text-classification")
        return task, await task.classify(ClassificationRequest(model="m", input=DOCUMENTS))

    task, response = _served(run)
    assert [d.index for d in response.data] == list(range(len(DOCUMENTS)))
    worst = 0.0
    for data, want in zip(response.data, expected, strict=True):
        assert [s.label for s in data.scores] == [w["label"] for w in want]  # highest first, as the pipeline
        worst = max(worst, *(abs(s.score - w["score"]) for s, w in zip(data.scores, want, strict=True)))
        assert data.label == want[0]["label"] and data.num_classes == 3
        assert data.probs == [next(s.score for s in data.scores if s.label == label) for label in LABELS]
        assert sum(data.probs) == pytest.approx(1.0)
    assert worst < 1e-4
    assert response.usage.input_tokens == [len(task.tokenizer(doc)["input_ids"]) for doc in DOCUMENTS]


def test_classification_refuses_an_input_longer_than_the_context(models):
    async def run():
        task = _load(text_classification, models["classifier"], "text-classification")
        with pytest.raises(APIError) as error:
            await task.classify(ClassificationRequest(model="m", input=["fine", "fox " * 200]))
        return error.value

    error = _served(run)
    assert error.status_code == 400 and error.param == "input" and error.code == "context_length_exceeded"
    assert "input[1]" in error.message


def test_a_rerank_model_must_have_one_output(models):
    with pytest.raises(ValueError, match="text-classification"):
        _load(rerank, models["classifier"], "rerank")


def test_concurrent_requests_share_a_batch_and_large_ones_are_split(models):
    async def run():
        task = _load(text_classification, models["classifier"], "text-classification", max_batch_size=8,
                     batch_wait_timeout_s=0.5)
        sizes: list[int] = []
        real = task.engine.logits
        task.engine.logits = lambda batch: sizes.append(len(batch)) or real(batch)
        together = await asyncio.gather(*(task.classify(ClassificationRequest(model="m", input=[doc, doc]))
                                          for doc in DOCUMENTS[:4]))
        shared = list(sizes)
        sizes.clear()
        large = await task.classify(ClassificationRequest(model="m", input=DOCUMENTS * 2))
        return shared, sorted(sizes), together, large

    shared, split, together, large = _served(run)
    assert shared == [8]  # four requests of two inputs: one engine call
    assert split == [2, 8]  # ten inputs, at most eight per batch
    assert np.allclose([d.probs for d in together[1].data], [large.data[1].probs, large.data[6].probs], atol=1e-6)
