"""HardwareReport x model config -> the backend, device and dtype a replica uses."""

from __future__ import annotations

from dataclasses import dataclass

from .detect import HardwareReport


class BackendUnavailableError(RuntimeError):
    pass


@dataclass(frozen=True)
class BackendChoice:
    backend: str  # "openvino" | "transformers"
    device: str  # "cpu" | "cuda" | "mps"
    dtype: str  # torch dtype name for transformers; informational for OpenVINO
    reason: str


def select_backend(requested: str, report: HardwareReport) -> BackendChoice:
    """auto: a GPU node runs transformers on the GPU; a CPU node runs OpenVINO where it is
    installed (it is the fastest CPU path we have measured), else transformers on the CPU."""
    if requested == "openvino":
        if not report.has_openvino_cpu:
            raise BackendUnavailableError("backend 'openvino' was requested but OpenVINO is not installed or has no CPU device")
        return BackendChoice("openvino", "cpu", "float32", "requested")
    gpu = _gpu(report)
    if requested == "transformers":
        return BackendChoice("transformers", *gpu, "requested") if gpu else BackendChoice("transformers", "cpu", "float32", "requested")
    if gpu:
        return BackendChoice("transformers", *gpu, f"auto: {gpu[0]} available")
    if report.has_openvino_cpu:
        return BackendChoice("openvino", "cpu", "float32", "auto: CPU node with OpenVINO")
    return BackendChoice("transformers", "cpu", "float32", "auto: CPU node without OpenVINO")


def _gpu(report: HardwareReport) -> tuple[str, str] | None:
    if report.cuda_devices:  # ROCm builds of torch also expose devices as "cuda"
        return "cuda", "float16"
    if report.mps:
        return "mps", "float16"
    return None
