"""How busy a node's devices are, for hf_server_hardware_utilization: the CPU (compute and
memory, from psutil) and each NVIDIA GPU (compute and memory, from NVML when the
`nvidia-ml-py` package is installed; a GPU without NVML is not sampled rather than guessed).

Sampled by the node's hardware actor (probe.py) every few seconds, never in a replica: NVML
reads every GPU of the node, including those no replica reserved, without creating a CUDA
context.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("ray.serve")

Sample = tuple[str, str, float]  # (device, resource, busy fraction 0-1)


def cpu_samples(psutil: Any) -> list[Sample]:
    # cpu_percent(None): the busy share since the previous call (the sampling period).
    return [("cpu", "compute", psutil.cpu_percent(interval=None) / 100.0),
            ("cpu", "memory", psutil.virtual_memory().percent / 100.0)]


def nvml_samples(nvml: Any) -> list[Sample]:
    samples: list[Sample] = []
    for index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        rates = nvml.nvmlDeviceGetUtilizationRates(handle)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        samples.append((f"cuda:{index}", "compute", rates.gpu / 100.0))
        samples.append((f"cuda:{index}", "memory", memory.used / memory.total if memory.total else 0.0))
    return samples


def open_nvml() -> Any | None:
    """NVML, initialised, or None (no package, no driver, no GPU)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # noqa: BLE001 - ImportError, or the library's NVMLError: no GPU here
        return None


def sample(psutil: Any, nvml: Any | None) -> list[Sample]:
    samples = cpu_samples(psutil)
    if nvml is not None:
        try:
            samples += nvml_samples(nvml)
        except Exception as exc:  # noqa: BLE001 - a GPU fallen off the bus must not stop the CPU samples
            logger.warning("GPU utilisation could not be read: %s", exc)
    return samples
