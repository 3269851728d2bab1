"""How many embedding batches run at once: the OpenVINO encoder's streams (the same vectors
as one stream, as many batches at once as it has infer requests, even as a process's first
inferences), and the embedding task's SlotBatcher running exactly the engine's `concurrency`
batches at once, never more."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from contract.config import ModelAppArgs
from contract.embedding_protocol import EmbeddingRequest
from deployments.engines.encoders import OpenVINOEncoder, PoolingSpec
from deployments.sources import export_openvino
from deployments.tasks.embedding import EmbeddingTask
from tests.engine_concurrency import BatchRecorder, assert_same_rows_from_two_threads
from tests.tiny_models import build_tiny_bert


class _SlowEngine(BatchRecorder):
    """Takes 50 ms per batch and records how many batches ran at once."""

    name = "fake"
    device = "cpu"
    dimensions = 4
    spec = PoolingSpec()

    def encode(self, batch: list[list[int]]) -> np.ndarray:
        with self.batch(len(batch)):
            return np.tile(np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32), (len(batch), 1))


class _Tokenizer:
    pad_token_id = 0

    def __len__(self) -> int:
        return 100

    def __call__(self, texts, add_special_tokens=True, truncation=False):
        if isinstance(texts, str):
            return {"input_ids": [1, 5, 2] if add_special_tokens else [5]}
        return {"input_ids": [[1, 5, 2] for _ in texts]}


def _task(engine: _SlowEngine) -> EmbeddingTask:
    return EmbeddingTask("m", _Tokenizer(), engine, max_input_tokens=16, supports_dimensions=False,
                         max_batch_size=2, batch_wait_timeout_s=0.0)


@pytest.mark.parametrize("concurrency", [1, 2, 3])
def test_the_task_runs_as_many_batches_at_once_as_the_engine(concurrency):
    engine = _SlowEngine(concurrency)

    async def run():
        task = _task(engine)
        return await asyncio.gather(*(task.embed(EmbeddingRequest(model="m", input=[f"text {i}", f"more {i}"]))
                                      for i in range(8)))

    responses = asyncio.run(run())
    assert engine.most == concurrency
    assert sum(engine.batches) == 16 and max(engine.batches) <= 2
    assert all(len(r.data) == 2 and r.usage.prompt_tokens == 6 for r in responses)


@pytest.fixture(scope="module")
def tiny_ir(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("encoder-streams")
    hf_dir = build_tiny_bert(root / "hf")
    export_openvino(hf_dir, "feature-extraction", "fp32", root / "ir")
    return hf_dir, root / "ir"


def test_openvino_streams_give_the_same_vectors_and_run_batches_at_once(tiny_ir):
    hf_dir, ir_dir = tiny_ir
    spec = PoolingSpec.from_model_dir(hf_dir)
    one = OpenVINOEncoder(ir_dir, spec, 0, num_threads=2, streams=1)
    two = OpenVINOEncoder(ir_dir, spec, 0, num_threads=2, streams=2)
    assert one.concurrency == 1 and two.concurrency == 2
    batches = [[[2, 7, 9, 3]], [[2, 11, 3], [2, 5, 6, 8, 3]]]
    assert_same_rows_from_two_threads(two.encode, batches, [one.encode(batch) for batch in batches])


def test_encoder_streams_is_an_embedding_arg():
    assert ModelAppArgs(source="x", task="embedding").encoder_streams == "auto"
    assert ModelAppArgs(source="x", task="embedding", encoder_streams=1).encoder_streams == 1
    with pytest.raises(ValueError, match="encoder_streams"):
        ModelAppArgs(source="x", task="embedding", encoder_streams=0)
    with pytest.raises(ValueError, match="not used by text-generation"):
        ModelAppArgs(source="x", task="text-generation", encoder_streams=2)


# A fresh process per try: what deadlocked is OpenVINO's first numpy call, once per process.
_FIRST_CALLS = """
import sys, threading
from pathlib import Path
from deployments.engines.encoders import OpenVINOEncoder, PoolingSpec
engine = OpenVINOEncoder(Path(sys.argv[1]), PoolingSpec.from_model_dir(Path(sys.argv[2])), 0, num_threads=2, streams=2)
start, finished = threading.Barrier(2), threading.Event()
def encode():
    start.wait()
    engine.encode([[2, 7, 9, 3]] * 8)
def loop():  # the replica's event loop, taking the GIL in turn with the two
    while not finished.is_set():
        sum(range(1000))
threads = [threading.Thread(target=encode) for _ in range(2)]
busy = threading.Thread(target=loop)
for thread in [*threads, busy]:
    thread.start()
for thread in threads:
    thread.join()
finished.set()
print("done")
"""


def test_two_first_inferences_at_once_do_not_deadlock(tiny_ir):
    """Two batches at once as a replica's first request runs them (two slots, two threads).
    Without the engine's own first inference this hung about one process in two."""
    hf_dir, ir_dir = tiny_ir
    for _ in range(6):
        try:
            run = subprocess.run([sys.executable, "-c", _FIRST_CALLS, str(ir_dir), str(hf_dir)], capture_output=True,
                                 text=True, timeout=30, cwd=Path(__file__).resolve().parents[2])
        except subprocess.TimeoutExpired:
            pytest.fail("two first inferences at once deadlocked the process")
        assert run.returncode == 0 and run.stdout.strip() == "done", run.stderr[-2000:]
