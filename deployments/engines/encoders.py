"""Embedding engines: a transformer encoder plus the model's pooling and normalisation.

Pooling follows the sentence-transformers files shipped with the model (modules.json,
1_Pooling/config.json, a Normalize module), so vectors match what sentence-transformers
computes; a plain HF encoder without them gets mean pooling and L2 normalisation.
Engines are blocking; the embedding task runs them off the event loop, as many batches at once
as the engine's `concurrency`.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

logger = logging.getLogger("ray.serve")

PoolingMode = Literal["mean", "cls", "max", "lasttoken"]


@dataclass(frozen=True)
class PoolingSpec:
    mode: PoolingMode = "mean"
    normalize: bool = True
    max_seq_length: int | None = None

    @classmethod
    def from_model_dir(cls, model_dir: Path) -> PoolingSpec:
        modules_file = model_dir / "modules.json"
        if not modules_file.exists():
            return cls()
        modules = json.loads(modules_file.read_text())
        mode: PoolingMode = "mean"
        normalize = False
        for module in modules:
            kind = module.get("type", "")
            if kind.endswith("Pooling"):
                pooling = json.loads((model_dir / module["path"] / "config.json").read_text())
                if pooling.get("pooling_mode_cls_token"):
                    mode = "cls"
                elif pooling.get("pooling_mode_max_tokens"):
                    mode = "max"
                elif pooling.get("pooling_mode_lasttoken"):
                    mode = "lasttoken"
                else:
                    mode = "mean"
            elif kind.endswith("Normalize"):
                normalize = True
        max_seq_length = None
        st_config = model_dir / "sentence_bert_config.json"
        if st_config.exists():
            max_seq_length = json.loads(st_config.read_text()).get("max_seq_length")
        return cls(mode=mode, normalize=normalize, max_seq_length=max_seq_length)


def pad_batch(batch: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(ids) for ids in batch)
    input_ids = np.full((len(batch), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = ids
        mask[row, : len(ids)] = 1
    return input_ids, mask


def pool(hidden: np.ndarray, mask: np.ndarray, spec: PoolingSpec) -> np.ndarray:
    hidden = hidden.astype(np.float32, copy=False)
    m = mask[..., None].astype(np.float32)
    if spec.mode == "cls":
        out = hidden[:, 0]
    elif spec.mode == "max":
        out = np.where(m > 0, hidden, -np.inf).max(axis=1)
    elif spec.mode == "lasttoken":
        out = hidden[np.arange(hidden.shape[0]), mask.sum(axis=1) - 1]
    else:
        out = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
    if spec.normalize:
        out = out / np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
    return out.astype(np.float32, copy=False)


class OpenVINOStreams:
    """An IR compiled for `streams` batches at once, with one infer request per batch in flight
    (what both OpenVINO encoders here run on: the embedding encoder and the sequence classifier).

    streams=1 is OpenVINO's LATENCY hint (one batch at a time on every core); more, or None
    (the THROUGHPUT hint chooses: 2 on 2 cores), run that many batches at once, each on its share
    of the cores. `infer` borrows a request, blocking while all are busy."""

    def __init__(self, xml: Path, device: str, *, streams: int | None, num_threads: int | None, config: dict | None = None):
        import openvino as ov

        config = {"PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT", **(config or {})}
        if streams is not None and streams > 1:
            config["NUM_STREAMS"] = streams
        if num_threads:
            config["INFERENCE_NUM_THREADS"] = num_threads
        self.compiled = ov.Core().compile_model(str(xml), device, config)
        self.concurrency = 1 if streams == 1 else max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(self.concurrency):
            self._idle.put(self.compiled.create_infer_request())
        self.inputs = {port.get_any_name() for port in self.compiled.inputs}
        self.output = self.compiled.outputs[0]
        self._first_inference()

    def _first_inference(self) -> None:
        """One inference on this thread before any concurrent one. OpenVINO's Python binding
        sets up its numpy bridge on first use inside a C++ static guard while waiting for the
        GIL: two threads making the first call at once deadlock the whole process (the replica
        stops answering even its health checks). Also takes the first inference's one-time
        cost out of the first request."""
        feeds = {
            port.get_any_name(): np.ones([dim.get_length() if dim.is_static else 1 for dim in port.get_partial_shape()],
                                         dtype=port.get_element_type().to_dtype())
            for port in self.compiled.inputs
        }
        self.infer(feeds)

    def infer(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The first output for `feeds` (those the model takes), as a numpy array of its own."""
        request = self._idle.get()
        try:
            return np.array(request.infer({k: v for k, v in feeds.items() if k in self.inputs})[self.output])
        finally:
            self._idle.put(request)


class OpenVINOEncoder:
    """The IR exported by optimum-intel, run directly on the OpenVINO runtime.

    streams=1 runs one batch at a time on every core (OpenVINO's LATENCY hint): a lone request's
    lowest latency. More streams run that many batches at once, each on its share of the cores
    (THROUGHPUT hint; None lets OpenVINO choose, 2 on a 2-core machine): small batches stop
    paying for parallel kernels that wait on each other, and a busy server keeps every core
    inferring. On 2 cores (`python -m bench.encoder_streams`) two streams cost 3.2-3.6 CPU ms per
    input at batch 1 against 4.0-4.3 on one, and gave more inputs/s at every batch size (964 vs
    900 at 32). `concurrency` is how many batches to run at once.
    """

    name = "openvino"

    def __init__(self, ir_dir: Path, spec: PoolingSpec, pad_id: int, *, num_threads: int | None, device: str = "CPU",
                 streams: int | None = 1, config: dict | None = None):
        """`config`: more OpenVINO properties (bench.encoder_precision sets the inference precision)."""
        self._model = OpenVINOStreams(ir_dir / "openvino_model.xml", device, streams=streams, num_threads=num_threads,
                                      config=config)
        self.concurrency = self._model.concurrency
        self.spec = spec
        self.pad_id = pad_id
        self.device = device.lower()
        self.dimensions = int(self._model.output.get_partial_shape()[-1].get_length())

    def encode(self, batch: list[list[int]]) -> np.ndarray:
        input_ids, mask = pad_batch(batch, self.pad_id)
        feeds = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}
        return pool(self._model.infer(feeds), mask, self.spec)


class TorchEncoder:
    name = "transformers"
    concurrency = 1  # torch parallelises one batch across its threads

    def __init__(self, hf_dir: Path, spec: PoolingSpec, pad_id: int, *, device: str, dtype: str, num_threads: int | None):
        import torch
        from transformers import AutoModel

        if num_threads:
            torch.set_num_threads(num_threads)
        self._torch = torch
        self._model = AutoModel.from_pretrained(str(hf_dir), dtype=getattr(torch, dtype)).to(device).eval()
        self._accepts_token_types = "token_type_ids" in self._model.forward.__code__.co_varnames
        self._lock = threading.Lock()
        self.spec = spec
        self.pad_id = pad_id
        self.device = device
        self.dimensions = int(self._model.config.hidden_size)

    def encode(self, batch: list[list[int]]) -> np.ndarray:
        torch = self._torch
        input_ids, mask = pad_batch(batch, self.pad_id)
        feeds = {
            "input_ids": torch.from_numpy(input_ids).to(self.device),
            "attention_mask": torch.from_numpy(mask).to(self.device),
        }
        if self._accepts_token_types:
            feeds["token_type_ids"] = torch.zeros_like(feeds["input_ids"])
        with self._lock, torch.inference_mode():
            hidden = self._model(**feeds).last_hidden_state.float().cpu().numpy()
        return pool(hidden, mask, self.spec)
