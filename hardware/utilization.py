"""How busy a node's devices are, for hf_server_hardware_utilization: the CPU (compute and
memory, from psutil) and each NVIDIA GPU (compute and memory, from NVML when the
`nvidia-ml-py` package is installed; a GPU without NVML is not sampled rather than guessed).
And the free memory of a node's report, re-read the same cheap way (`with_current_memory`).

Sampled by the node's hardware actor (probe.py) every few seconds, never in a replica: NVML
reads every GPU of the node, including those no replica reserved, without creating a CUDA
context.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .report import Device, NodeReport, Platform

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


def nvidia_gpu_present(proc: Path = Path("/proc/driver/nvidia/gpus"), dev: Path = Path("/dev")) -> bool:
    """Whether the NVIDIA driver sees a GPU on this node, read without NVML or CUDA."""
    with contextlib.suppress(OSError):  # no NVIDIA driver: no such folder
        if any(proc.iterdir()):
            return True
    return any(dev.glob("nvidia[0-9]*"))


def open_nvml(gpu_present: Callable[[], bool] = nvidia_gpu_present) -> Any | None:
    """NVML, initialised, or None (no package, no driver, no GPU). On a node with an NVIDIA GPU a
    missing NVML is logged once: its utilisation gauges and free-memory re-read are off."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception as exc:  # noqa: BLE001 - ImportError, or the library's NVMLError (no driver)
        if gpu_present():
            reason = ("the nvidia-ml-py package (the `gpu` extra) is not installed"
                      if isinstance(exc, ImportError) else f"NVML did not initialise ({exc})")
            logger.warning("NVIDIA GPU found but %s: GPU utilisation and free-memory re-reads are off", reason)
        return None


def sample(psutil: Any, nvml: Any | None) -> list[Sample]:
    samples = cpu_samples(psutil)
    if nvml is not None:
        try:
            samples += nvml_samples(nvml)
        except Exception as exc:  # noqa: BLE001 - a GPU fallen off the bus must not stop the CPU samples
            logger.warning("GPU utilisation could not be read: %s", exc)
    return samples


def with_current_memory(report: NodeReport, psutil: Any, nvml: Any | None) -> NodeReport:
    """The report with its free memory read now: the CPU's from psutil, each NVIDIA GPU's from
    NVML (found by the UUID the probe recorded). The rest of a report does not change while a
    node runs, and detecting it again costs seconds of CPU (a fresh interpreter importing torch
    and OpenVINO), which on a small node halves serving throughput while it runs. A GPU with no
    UUID or no NVML (ROCm) keeps the free memory of the detection."""
    available = int(psutil.virtual_memory().available)
    cpu = report.cpu.model_copy(update={"memory_available_bytes": available})
    platforms = dict(report.platforms)
    platforms["cpu"] = _with_devices(platforms["cpu"], lambda device: available)
    if nvml is not None and "cuda" in platforms:
        platforms["cuda"] = _with_devices(platforms["cuda"], lambda device: _nvml_free(nvml, device))
    return report.model_copy(update={"cpu": cpu, "platforms": platforms})


def _with_devices(platform: Platform, free_of: Callable[[Device], int | None]) -> Platform:
    devices = []
    for device in platform.devices:
        free = free_of(device)
        devices.append(device if free is None else device.model_copy(update={"free_memory_bytes": free}))
    return platform.model_copy(update={"devices": devices})


def _nvml_free(nvml: Any, device: Device) -> int | None:
    uuid = device.properties.get("uuid")
    if not uuid:
        return None
    try:
        handle = nvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
        return int(nvml.nvmlDeviceGetMemoryInfo(handle).free)
    except Exception as exc:  # noqa: BLE001 - a GPU fallen off the bus: keep the last reading
        logger.warning("free memory of %s could not be read: %s", device.name, exc)
        return None
