"""Backend selection from a hardware report."""

from __future__ import annotations

import pytest

from hardware.detect import CpuInfo, HardwareReport, detect
from hardware.select import BackendUnavailableError, select_backend

CPU = CpuInfo(vendor="GenuineIntel", model="x", logical_cores=8, flags=("avx512f",))


def report(**kwargs) -> HardwareReport:
    return HardwareReport(hostname="h", cpu=CPU, **kwargs)


def test_auto_prefers_openvino_on_cpu_nodes():
    choice = select_backend("auto", report(openvino_devices=("CPU",)))
    assert (choice.backend, choice.device) == ("openvino", "cpu")


def test_auto_uses_the_gpu_when_there_is_one():
    choice = select_backend("auto", report(cuda_devices=("H100",), openvino_devices=("CPU",)))
    assert (choice.backend, choice.device, choice.dtype) == ("transformers", "cuda", "float16")
    assert select_backend("auto", report(mps=True)).device == "mps"


def test_auto_without_openvino_falls_back_to_torch_cpu():
    assert (select_backend("auto", report()).backend, select_backend("auto", report()).device) == ("transformers", "cpu")


def test_explicit_backends():
    assert select_backend("transformers", report(openvino_devices=("CPU",))).backend == "transformers"
    with pytest.raises(BackendUnavailableError):
        select_backend("openvino", report())


def test_detect_on_this_machine_reports_a_cpu():
    found = detect()
    assert found.cpu.logical_cores >= 1
    assert isinstance(found.as_dict(), dict)
