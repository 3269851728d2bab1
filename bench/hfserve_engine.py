"""What hfserve's embedding model ran on in the server phase, recorded beside each peer's engine
and precision: the backend and device its model card reports, and the precision OpenVINO infers
in, which the card does not carry: the IR compiled here as the encoder compiles it (no precision
hint, so the CPU's fastest: bf16 where it has AVX512_BF16 or AMX), and asked back.
"""

from __future__ import annotations

import httpx

from contract.config import ModelAppArgs
from deployments.engines.encoders import OpenVINOStreams

from .raw import embedding_model
from .workload import EMBED_MODEL, EMBED_SOURCE

# OpenVINO's element type names, as torch and Infinity spell them.
_PRECISIONS = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}


def served_engine(base: str, headers: dict[str, str]) -> dict:
    """The embedding model's backend ("openvino", "transformers") and device, from its model card."""
    response = httpx.get(f"{base}/v1/models/{EMBED_MODEL}", headers=headers, timeout=30)
    response.raise_for_status()
    card = response.json()
    return {"engine": card.get("backend"), "device": card.get("device")}


def openvino_precision(device: str = "CPU") -> str:
    """The precision the server's OpenVINO encoder infers in on `device`: its IR (the cached
    conversion) compiled with the encoder's settings for the config's default arguments."""
    args = ModelAppArgs(source=EMBED_SOURCE, task="embedding")
    prepared, _ = embedding_model(lambda _message: None)
    compiled = OpenVINOStreams(prepared.openvino_dir / "openvino_model.xml", device.upper(),
                               streams=None if args.encoder_streams == "auto" else args.encoder_streams,
                               num_threads=args.num_threads).compiled
    name = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    return _PRECISIONS.get(name, name)


def record(base: str, headers: dict[str, str]) -> dict:
    """{engine, device, precision} while the server runs; precision None for an engine other
    than OpenVINO (transformers computes in the dtype its backend names)."""
    served = served_engine(base, headers)
    precision = openvino_precision(served.get("device") or "cpu") if served.get("engine") == "openvino" else None
    return {**served, "precision": precision}
