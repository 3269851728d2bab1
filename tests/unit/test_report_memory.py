"""A node report's free memory, re-read without detecting again (hardware/utilization.py):
psutil for the CPU, NVML by UUID for NVIDIA GPUs. No Ray, no GPU: fake psutil and NVML."""

from __future__ import annotations

from types import SimpleNamespace

from hardware.report import PLATFORMS, CpuReport, Device, NodeReport, Platform
from hardware.utilization import with_current_memory

GIB = 1024**3


def _report() -> NodeReport:
    cpu = CpuReport(vendor="GenuineIntel", model="Xeon", logical_cores=16, memory_total_bytes=128 * GIB,
                    memory_available_bytes=100 * GIB)
    gpus = [Device(index=0, name="H200", total_memory_bytes=140 * GIB, free_memory_bytes=139 * GIB,
                   properties={"uuid": "aaaa-0"}),
            Device(index=1, name="H200", total_memory_bytes=140 * GIB, free_memory_bytes=139 * GIB,
                   properties={"uuid": "GPU-bbbb-1"}),
            Device(index=2, name="old driver", total_memory_bytes=16 * GIB, free_memory_bytes=15 * GIB)]
    platforms = {name: Platform(available=False, reason="absent") for name in PLATFORMS}
    platforms["cuda"] = Platform(available=True, reason="3 CUDA device(s)", version="13.0", devices=gpus)
    platforms["cpu"] = Platform(available=True, reason="16 logical cores",
                                devices=[Device(index=0, name="Xeon", total_memory_bytes=128 * GIB, free_memory_bytes=100 * GIB)])
    return NodeReport(hostname="gpu-node", cpu=cpu, platforms=platforms, detected_at=1000.0)


class FakeNvml:
    """NVML whose devices are known by UUID only (its index order is not CUDA's)."""

    def __init__(self, free_by_uuid: dict[str, int], broken: set[str] = frozenset()):
        self.free_by_uuid, self.broken, self.asked = free_by_uuid, broken, []

    def nvmlDeviceGetHandleByUUID(self, uuid: str):  # noqa: N802 - NVML's name
        self.asked.append(uuid)
        if uuid in self.broken:
            raise RuntimeError("GPU is lost")
        return uuid

    def nvmlDeviceGetMemoryInfo(self, handle):  # noqa: N802
        return SimpleNamespace(free=self.free_by_uuid[handle])


PSUTIL = SimpleNamespace(virtual_memory=lambda: SimpleNamespace(available=42 * GIB))


def test_free_memory_is_read_now_for_the_cpu_and_each_gpu_by_its_uuid():
    nvml = FakeNvml({"GPU-aaaa-0": 60 * GIB, "GPU-bbbb-1": 7 * GIB})
    fresh = with_current_memory(_report(), PSUTIL, nvml)
    assert fresh.cpu.memory_available_bytes == 42 * GIB
    assert fresh.platforms["cpu"].devices[0].free_memory_bytes == 42 * GIB
    assert [d.free_memory_bytes for d in fresh.platforms["cuda"].devices] == [60 * GIB, 7 * GIB, 15 * GIB]
    assert nvml.asked == ["GPU-aaaa-0", "GPU-bbbb-1"]  # NVML's form of the UUID; no UUID, no guess
    # Everything else is the detection's, untouched.
    assert fresh.detected_at == 1000.0 and fresh.cpu.memory_total_bytes == 128 * GIB
    assert fresh.platforms["cuda"].devices[0].properties == {"uuid": "aaaa-0"}


def test_a_gpu_nvml_cannot_read_keeps_its_last_figure_and_the_rest_is_read():
    nvml = FakeNvml({"GPU-bbbb-1": 7 * GIB}, broken={"GPU-aaaa-0"})
    fresh = with_current_memory(_report(), PSUTIL, nvml)
    assert [d.free_memory_bytes for d in fresh.platforms["cuda"].devices] == [139 * GIB, 7 * GIB, 15 * GIB]
    assert fresh.cpu.memory_available_bytes == 42 * GIB


def test_without_nvml_only_the_cpu_is_read_again():
    fresh = with_current_memory(_report(), PSUTIL, None)
    assert [d.free_memory_bytes for d in fresh.platforms["cuda"].devices] == [139 * GIB, 139 * GIB, 15 * GIB]
    assert fresh.cpu.memory_available_bytes == 42 * GIB
