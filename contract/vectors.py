"""The one encoding of embedding vectors on the wire: float lists, or base64 of
little-endian float32 (OpenAI's `encoding_format: base64`)."""

from __future__ import annotations

import base64

import numpy as np


def encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


def decode_base64_vector(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4")
