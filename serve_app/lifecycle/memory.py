"""A model's memory before it is loaded: its parameter count (from the safetensors headers or
the GGUF tensor table, no weights read) times the bytes per parameter it will be served in.

The engines serve weights as `weight_format` says (fp32 by default: the OpenVINO export and
transformers both load fp32 unless told otherwise), so a bf16 checkpoint of N parameters is
estimated at 4N bytes, not at its file size. Activations and the KV cache are not counted:
the budget is about weights, and the real resident memory is measured after the load.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from contract.config import ModelAppArgs
from deployments.sources import SourceError, parse_source

BYTES_PER_PARAMETER = {"fp32": 4, "fp16": 2, "int8": 1}
_HEADER_LIMIT = 100 * 1024 * 1024  # safetensors caps its JSON header at 100 MB


def safetensors_parameters(path: Path) -> int:
    with path.open("rb") as file:
        (size,) = struct.unpack("<Q", file.read(8))
        if size > _HEADER_LIMIT:
            raise ValueError(f"{path.name}: a safetensors header of {size} bytes")
        header = json.loads(file.read(size))
    total = 0
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        count = 1
        for dim in tensor["shape"]:
            count *= int(dim)
        total += count
    return total


def gguf_parameters(path: Path) -> int:
    from gguf import GGUFReader

    return sum(int(tensor.n_elements) for tensor in GGUFReader(str(path)).tensors)


def parameter_count(location: Path) -> int | None:
    """Parameters of a model directory or GGUF file; None when its weights cannot be counted
    without loading them (a pytorch_model.bin, say)."""
    if location.is_file() and location.suffix.lower() == ".gguf":
        return gguf_parameters(location)
    if location.is_dir():
        files = sorted(location.glob("*.safetensors"))
        if files:
            return sum(safetensors_parameters(file) for file in files)
    return None


def estimate_bytes(args: ModelAppArgs) -> int | None:
    """The estimate for `args`, or None where the source is not on this node's disk (a hub id,
    or a local path another node has): such a load is checked against the budget once loaded."""
    try:
        source = parse_source(args.source, args.revision)
    except SourceError:
        return None
    if source.kind == "hub":
        return None
    count = parameter_count(Path(source.location))
    return None if count is None else count * BYTES_PER_PARAMETER[args.weight_format]
