"""How many rerank and classification batches run at once: the OpenVINO classifier's streams
(the same logits as one stream, as many batches at once as it has infer requests), and the
scorer's SlotBatcher running exactly the engine's `concurrency` batches at once, never more."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from contract.config import ModelAppArgs
from deployments.engines.classifiers import OpenVINOClassifier, Sequence
from deployments.sources import export_openvino
from deployments.tasks.sequence_scoring import SequenceScorer
from tests.engine_concurrency import BatchRecorder, assert_same_rows_from_two_threads
from tests.tiny_models import build_tiny_bert_classifier


class _SlowClassifier(BatchRecorder):
    """Takes 50 ms per batch and records how many batches ran at once."""

    def logits(self, batch: list[Sequence]) -> np.ndarray:
        with self.batch(len(batch)):
            return np.array([[float(len(seq.ids))] for seq in batch], dtype=np.float32)


@pytest.mark.parametrize("concurrency", [1, 2, 3])
def test_the_scorer_runs_as_many_batches_at_once_as_the_engine(concurrency):
    engine = _SlowClassifier(concurrency)
    scorer = SequenceScorer("m", engine, max_batch_size=2, batch_wait_timeout_s=0.0)

    async def run():
        return await asyncio.gather(*(scorer.logits([Sequence.single([1] * (i + 1)), Sequence.single([1] * (i + 2))])
                                      for i in range(8)))

    scores = asyncio.run(run())
    assert engine.most == concurrency
    assert sum(engine.batches) == 16 and max(engine.batches) <= 2
    # Every request gets its own rows back, in its order, whichever batch they ran in.
    assert [row.ravel().tolist() for row in scores] == [[i + 1.0, i + 2.0] for i in range(8)]
    assert scorer.stats().finished_requests_total == 8


@pytest.fixture(scope="module")
def tiny_classifier_ir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("classifier-streams")
    hf_dir = build_tiny_bert_classifier(root / "hf")
    export_openvino(hf_dir, "text-classification", "fp32", root / "ir")
    return root / "ir"


def test_openvino_classifier_streams_give_the_same_logits_and_run_batches_at_once(tiny_classifier_ir):
    one = OpenVINOClassifier(tiny_classifier_ir, 0, num_threads=2, streams=1)
    two = OpenVINOClassifier(tiny_classifier_ir, 0, num_threads=2, streams=2)
    assert one.concurrency == 1 and two.concurrency == 2
    batches = [[Sequence([2, 7, 9, 3], [0, 0, 0, 0])],
               [Sequence([2, 11, 3, 5, 3], [0, 0, 0, 1, 1]), Sequence.single([2, 5, 6, 8, 3])]]
    assert_same_rows_from_two_threads(two.logits, batches, [one.logits(batch) for batch in batches])


def test_encoder_streams_is_a_rerank_and_classification_arg():
    for task in ("rerank", "text-classification"):
        assert ModelAppArgs(source="x", task=task).encoder_streams == "auto"
        assert ModelAppArgs(source="x", task=task, encoder_streams=1).encoder_streams == 1
