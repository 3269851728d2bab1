"""A model's memory before it is loaded: its parameter count (from the safetensors headers or
the GGUF tensor table, no weights read) times the bytes per parameter it will be served in.

The engines serve weights as `weight_format` says (fp32 by default: the OpenVINO export and
transformers both load fp32 unless told otherwise), so a bf16 checkpoint of N parameters is
estimated at 4N bytes, not at its file size. Activations and the KV cache are not counted:
the budget is about weights, and the real resident memory is measured after the load.
Placement sizes a GPU share from the same count (gpu_memory_need; hardware/placement.py adds the
GPU's dtype, the KV cache or activations, and the CUDA context).
"""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

from contract.config import ModelAppArgs
from deployments.sources import SourceError, SourceNotFoundError, parse_source
from hardware.placement import MemoryNeed

logger = logging.getLogger("ray.serve")

BYTES_PER_PARAMETER = {"fp32": 4, "fp16": 2, "int8": 1}
_HEADER_LIMIT = 100 * 1024 * 1024  # safetensors caps its JSON header at 100 MB


def safetensors_parameters(path: Path) -> int:
    """The parameter count from the header, which is checked against the file: a corrupt or
    truncated file is a SourceError naming it, not a failure deep in the replica."""
    if not path.is_file():  # a FIFO would block the read
        raise SourceError(f"{path.name} is not a regular file")
    size = path.stat().st_size
    with path.open("rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise SourceError(f"{path.name} is not a safetensors file: it has {size} bytes")
        (header_size,) = struct.unpack("<Q", prefix)
        if header_size > min(_HEADER_LIMIT, size - 8):
            raise SourceError(f"{path.name} is not a safetensors file: its header claims {header_size} bytes of {size}")
        try:
            header = json.loads(file.read(header_size))
        except ValueError:
            raise SourceError(f"{path.name} is not a safetensors file: its header is not JSON") from None
    if not isinstance(header, dict):
        raise SourceError(f"{path.name} is not a safetensors file: its header is not a table of tensors")
    total, data_bytes = 0, size - 8 - header_size
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        try:
            shape, (start, end) = tensor["shape"], tensor["data_offsets"]
            count = 1
            for dim in shape:
                count *= int(dim)
            if not 0 <= int(start) <= int(end) <= data_bytes:
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise SourceError(f"{path.name} is corrupt or truncated: tensor {name[:80]!r} does not fit the file") from None
        total += count
    return total


def gguf_parameters(path: Path) -> int:
    from gguf import GGUFReader

    try:
        return sum(int(tensor.n_elements) for tensor in GGUFReader(str(path)).tensors)
    except Exception as exc:  # noqa: BLE001 - the reader fails in many ways on a file that is not GGUF
        raise SourceError(f"{path.name} is not a readable GGUF file ({type(exc).__name__})") from None


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


def local_parameters(args: ModelAppArgs) -> int | None:
    """The parameter count of `args`' weights, or None where the source is not on this node's disk
    (a hub id, or a local path another node has). SourceError for weights that do not parse."""
    try:
        source = parse_source(args.source, args.revision)
    except SourceNotFoundError:
        return None
    if source.kind == "hub":
        return None
    return parameter_count(Path(source.location))


def estimate_bytes(args: ModelAppArgs) -> int | None:
    """The estimate for `args`, or None where its weights are not here to count: such a load is
    checked against the budget once loaded. SourceError for weights that do not parse."""
    count = local_parameters(args)
    return None if count is None else count * BYTES_PER_PARAMETER[args.weight_format]


def gpu_memory_need(args: ModelAppArgs) -> MemoryNeed | None:
    """What placement sizes a GPU share from: the parameter count (the weights here, else a hub
    model's safetensors headers read from the hub, else its files in the local hub cache) and the
    KV cache a text-generation model is given. None when the weights cannot be counted: a whole GPU then."""
    try:
        count = local_parameters(args) or _hub_parameters(args)
    except SourceError:
        return None  # the replica reports the source's problem, on the node that loads it
    if not count:
        return None
    kv_cache = int(args.kv_cache_gb * 2**30) if args.task == "text-generation" else 0
    return MemoryNeed(parameters=count, kv_cache_bytes=kv_cache)


def _hub_parameters(args: ModelAppArgs) -> int | None:
    source = parse_source(args.source, args.revision)
    if source.kind != "hub":
        return None
    from huggingface_hub import get_safetensors_metadata, snapshot_download

    try:  # the safetensors headers alone, a few small reads
        return sum(get_safetensors_metadata(source.location, revision=source.revision).parameter_count.values())
    except Exception as exc:  # noqa: BLE001 - offline, gated, no safetensors: try the local hub cache
        why = f"{type(exc).__name__}: {exc}"
    try:
        count = parameter_count(Path(snapshot_download(source.location, revision=source.revision,
                                                       local_files_only=True)))
    except Exception:  # noqa: BLE001 - not in the cache (the error types vary across huggingface_hub versions)
        count = None
    if count is None:
        logger.info("model %s: its parameters could not be counted before loading (%s)", args.source, why)
    return count
