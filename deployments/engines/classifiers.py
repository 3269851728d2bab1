"""Sequence-classification engines: a transformer with a classification head, one row of logits
per sequence (a text, or a query and document pair as a cross-encoder reads them).

Sequences come tokenised, with their token types (the segment of each token: 0 for a text or
a pair's first text, 1 for its second); a model without token types is not given them.
Engines are blocking; the tasks run them off the event loop, `concurrency` batches at a time
(the OpenVINO engine's streams, as the encoder's: deployments/engines/encoders.py).
"""

from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .encoders import OpenVINOStreams, pad_batch


@dataclass(frozen=True)
class Sequence:
    ids: list[int]
    types: list[int]

    @classmethod
    def single(cls, ids: list[int]) -> Sequence:
        return cls(ids, [0] * len(ids))


def pad_sequences(batch: list[Sequence], pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-padded input ids, attention mask and token types."""
    input_ids, mask = pad_batch([seq.ids for seq in batch], pad_id)
    types = np.zeros_like(input_ids)
    for row, seq in enumerate(batch):
        types[row, : len(seq.types)] = seq.types
    return input_ids, mask, types


class OpenVINOClassifier:
    """The IR exported by optimum-intel (OVModelForSequenceClassification), run directly on the
    OpenVINO runtime; `exact` computes in f32 whatever the CPU's faster precision. `streams` as
    the encoder's: 1 runs one batch at a time on every core, None lets the THROUGHPUT hint choose
    (2 on 2 cores), each batch then on its stream's share of the cores."""

    name = "openvino"

    def __init__(self, ir_dir: Path, pad_id: int, *, num_threads: int | None, device: str = "CPU", exact: bool = True,
                 streams: int | None = 1):
        # The CPU plugin computes in bf16 where the CPU has it (AVX512-BF16, AMX): scores then
        # differ from the model's by ~1e-2, enough to reorder close documents or move a score
        # across a client's threshold. f32 keeps them within ~1e-6 of transformers'.
        config = {"INFERENCE_PRECISION_HINT": "f32"} if exact else {}
        self._model = OpenVINOStreams(ir_dir / "openvino_model.xml", device, streams=streams, num_threads=num_threads,
                                      config=config)
        self.concurrency = self._model.concurrency
        self.pad_id = pad_id
        self.device = device.lower()
        self.num_labels = int(self._model.output.get_partial_shape()[-1].get_length())

    def logits(self, batch: list[Sequence]) -> np.ndarray:
        input_ids, mask, types = pad_sequences(batch, self.pad_id)
        feeds = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": types}
        return self._model.infer(feeds).astype(np.float32, copy=False)


class TorchClassifier:
    name = "transformers"
    concurrency = 1  # torch parallelises one batch across its threads

    def __init__(self, hf_dir: Path, pad_id: int, *, device: str, dtype: str, num_threads: int | None):
        import torch
        from transformers import AutoModelForSequenceClassification

        if num_threads:
            torch.set_num_threads(num_threads)
        self._torch = torch
        model = AutoModelForSequenceClassification.from_pretrained(str(hf_dir), dtype=getattr(torch, dtype))
        self._model = model.to(device).eval()
        # The signature, not forward.__code__: transformers wraps forward in decorators.
        self._accepts_token_types = "token_type_ids" in inspect.signature(self._model.forward).parameters
        self._lock = threading.Lock()
        self.pad_id = pad_id
        self.device = device
        self.num_labels = int(self._model.config.num_labels)

    def logits(self, batch: list[Sequence]) -> np.ndarray:
        torch = self._torch
        input_ids, mask, types = pad_sequences(batch, self.pad_id)
        feeds = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}
        if self._accepts_token_types:
            feeds["token_type_ids"] = torch.from_numpy(types)
        feeds = {name: value.to(self.device) for name, value in feeds.items()}
        with self._lock, torch.inference_mode():
            return self._model(**feeds).logits.float().cpu().numpy()
