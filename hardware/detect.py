"""What accelerators and runtimes this node has. Pure detection: no Ray, no side effects.

Each probe is guarded: a runtime that is not installed, or fails to initialise, counts as
absent rather than failing the report.
"""

from __future__ import annotations

import importlib.util
import os
import platform
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class CpuInfo:
    vendor: str
    model: str
    logical_cores: int
    flags: tuple[str, ...]  # the ones that matter for inference kernels


@dataclass(frozen=True)
class HardwareReport:
    hostname: str
    cpu: CpuInfo
    cuda_devices: tuple[str, ...] = ()
    rocm: bool = False
    mps: bool = False
    openvino_devices: tuple[str, ...] = ()
    qnn: bool = False
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def has_gpu(self) -> bool:
        return bool(self.cuda_devices) or self.mps

    @property
    def has_openvino_cpu(self) -> bool:
        return "CPU" in self.openvino_devices

    def as_dict(self) -> dict:
        return asdict(self)


_INTERESTING_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile", "fma", "neon", "asimd")


def cpu_info() -> CpuInfo:
    vendor, model, flags = platform.machine(), platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "vendor_id":
                    vendor = value.strip()
                elif key == "model name":
                    model = value.strip()
                elif key in ("flags", "Features"):
                    flags.update(value.split())
    except OSError:
        pass
    return CpuInfo(
        vendor=vendor,
        model=model,
        logical_cores=os.cpu_count() or 1,
        flags=tuple(f for f in _INTERESTING_FLAGS if f in flags),
    )


def detect() -> HardwareReport:
    errors: dict[str, str] = {}
    cuda: tuple[str, ...] = ()
    rocm = mps = qnn = False
    openvino_devices: tuple[str, ...] = ()
    if importlib.util.find_spec("torch") is not None:
        try:
            import torch

            if torch.cuda.is_available():
                cuda = tuple(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
                rocm = getattr(torch.version, "hip", None) is not None
            mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
        except Exception as exc:  # noqa: BLE001 - a broken driver means "no GPU", not a crash
            errors["torch"] = str(exc)
    if importlib.util.find_spec("openvino") is not None:
        try:
            import openvino as ov

            openvino_devices = tuple(ov.Core().available_devices)
        except Exception as exc:  # noqa: BLE001
            errors["openvino"] = str(exc)
    if importlib.util.find_spec("onnxruntime") is not None:
        try:
            import onnxruntime

            qnn = "QNNExecutionProvider" in onnxruntime.get_available_providers()
        except Exception as exc:  # noqa: BLE001
            errors["onnxruntime"] = str(exc)
    return HardwareReport(
        hostname=platform.node(),
        cpu=cpu_info(),
        cuda_devices=cuda,
        rocm=rocm,
        mps=mps,
        openvino_devices=openvino_devices,
        qnn=qnn,
        errors=errors,
    )
