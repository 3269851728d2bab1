"""hardware.detect with fake torch/openvino/onnxruntime modules: no Ray, no GPU needed."""

from __future__ import annotations

import subprocess
import sys
import warnings
from types import SimpleNamespace

import pytest

from hardware import detect as hw
from hardware.report import PLATFORMS, NodeReport

GIB = 1024**3


class FakeCuda:
    """torch.cuda over a list of (name, (major, minor), free, total) devices."""

    def __init__(self, devices=(), available=True, warning=None, mem_error=None, name_error=None):
        self.devices, self.available, self.warning = list(devices), available, warning
        self.mem_error, self.name_error = mem_error, name_error

    def is_available(self):
        if self.warning:
            warnings.warn(self.warning, UserWarning, stacklevel=1)
        return self.available

    def device_count(self):
        return len(self.devices) if self.available else 0

    def get_device_name(self, i):
        if self.name_error:
            raise self.name_error
        return self.devices[i][0]

    def get_device_capability(self, i):
        return self.devices[i][1]

    def mem_get_info(self, i):
        if self.mem_error:
            raise self.mem_error
        return self.devices[i][2], self.devices[i][3]

    def get_device_properties(self, i):
        return SimpleNamespace(total_memory=self.devices[i][3], uuid=f"8c4c07a0-0000-0000-0000-00000000000{i}")

    def is_bf16_supported(self):
        return True


def fake_torch(cuda="12.4", hip=None, mps_built=False, mps_available=False, **cuda_kwargs):
    mps = SimpleNamespace(is_built=lambda: mps_built, is_available=lambda: mps_available)
    return SimpleNamespace(
        version=SimpleNamespace(cuda=cuda, hip=hip),
        cuda=FakeCuda(**cuda_kwargs),
        backends=SimpleNamespace(mps=mps),
    )


H100 = ("NVIDIA H100 80GB HBM3", (9, 0), 70 * GIB, 80 * GIB)
T4 = ("Tesla T4", (7, 5), 14 * GIB, 15 * GIB)


# --- CUDA / ROCm ---------------------------------------------------------------------------


def test_cuda_build_with_two_devices():
    torch = fake_torch(devices=[H100, T4])
    cuda = hw.detect_cuda(torch)
    assert cuda.available and cuda.version == "12.4"
    first, second = cuda.devices
    assert (first.index, first.name, first.compute_capability, first.bf16) == (0, "NVIDIA H100 80GB HBM3", "9.0", True)
    assert (first.total_memory_bytes, first.free_memory_bytes) == (80 * GIB, 70 * GIB)
    assert (second.index, second.compute_capability, second.bf16) == (1, "7.5", False)
    # The UUID that names each device to NVML (whose order may differ from CUDA's).
    assert [d.properties["uuid"] for d in cuda.devices] == ["8c4c07a0-0000-0000-0000-000000000000",
                                                            "8c4c07a0-0000-0000-0000-000000000001"]
    rocm = hw.detect_rocm(torch)
    assert not rocm.available and rocm.reason == "torch is not a ROCm build"


def test_cuda_memory_falls_back_to_device_properties():
    cuda = hw.detect_cuda(fake_torch(devices=[H100], mem_error=RuntimeError("no context")))
    assert cuda.available
    assert cuda.devices[0].total_memory_bytes == 80 * GIB and cuda.devices[0].free_memory_bytes is None


def test_cuda_build_without_a_usable_device_says_why():
    torch = fake_torch(available=False, warning="CUDA initialization: Found no NVIDIA driver on your system.")
    cuda = hw.detect_cuda(torch)
    assert not cuda.available and not cuda.devices and cuda.version == "12.4"
    assert cuda.reason.startswith("torch.cuda.is_available() is False: ")
    assert "Found no NVIDIA driver" in cuda.reason


def test_cuda_unavailable_with_no_warning_still_has_a_reason():
    cuda = hw.detect_cuda(fake_torch(available=False))
    assert not cuda.available and cuda.reason.startswith("torch.cuda.is_available() is False: ")
    assert cuda.reason.split(": ", 1)[1]


def test_cpu_build_of_torch():
    cuda = hw.detect_cuda(fake_torch(cuda=None))
    assert not cuda.available and cuda.reason == "torch was built without CUDA"


def test_no_torch():
    for probe in (hw.detect_cuda, hw.detect_rocm, hw.detect_mps):
        found = probe(None)
        assert not found.available and found.reason == "torch is not installed"


def test_rocm_build_reports_devices_through_torch_cuda():
    torch = fake_torch(cuda=None, hip="6.1.40091", devices=[("AMD Instinct MI300X", (9, 4), 180 * GIB, 192 * GIB)])
    rocm = hw.detect_rocm(torch)
    assert rocm.available and rocm.version == "6.1.40091"
    assert rocm.devices[0].name == "AMD Instinct MI300X" and rocm.devices[0].bf16 is True
    assert rocm.devices[0].total_memory_bytes == 192 * GIB
    cuda = hw.detect_cuda(torch)
    assert not cuda.available and cuda.reason == "torch is a ROCm build (HIP 6.1.40091)"


def test_a_probe_that_raises_is_reported_not_raised():
    cuda = hw.detect_cuda(fake_torch(devices=[H100], name_error=RuntimeError("CUDA error: device-side assert")))
    assert not cuda.available
    assert "RuntimeError" in cuda.reason and "device-side assert" in cuda.reason


def test_a_module_whose_import_fails_is_reported(tmp_path, monkeypatch):
    (tmp_path / "broken_runtime_xyz.py").write_text("raise OSError('libcudart.so.12: cannot open shared object file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = hw._import("broken_runtime_xyz")
    found = hw.detect_cuda(module)
    assert not found.available
    assert "import broken_runtime_xyz failed" in found.reason and "libcudart" in found.reason
    assert hw._import("surely_not_installed_module_xyz") is None


# --- MPS ---------------------------------------------------------------------------------


def test_mps_available():
    mps = hw.detect_mps(fake_torch(cuda=None, mps_built=True, mps_available=True))
    assert mps.available and [d.name for d in mps.devices] == ["Apple GPU (MPS)"]


def test_mps_built_but_unavailable():
    mps = hw.detect_mps(fake_torch(cuda=None, mps_built=True, mps_available=False))
    assert not mps.available and "is_available() is False" in mps.reason


def test_mps_not_built():
    mps = hw.detect_mps(fake_torch())
    assert not mps.available and mps.reason == "no MPS: not a macOS arm64 build"


# --- OpenVINO ----------------------------------------------------------------------------


def fake_openvino(devices, properties, version="2024.4.0"):
    class Core:
        available_devices = list(devices)

        def get_property(self, device, key):
            value = properties[(device, key)]
            if isinstance(value, Exception):
                raise value
            return value

    return SimpleNamespace(Core=Core, get_version=lambda: version, __version__=version)


def test_openvino_with_cpu_and_gpu():
    ov = fake_openvino(
        ["CPU", "GPU.0"],
        {
            ("CPU", "FULL_DEVICE_NAME"): "Intel(R) Xeon(R) Platinum 8480+",
            ("CPU", "OPTIMIZATION_CAPABILITIES"): ["FP32", "BF16", "INT8"],
            ("GPU.0", "FULL_DEVICE_NAME"): "Intel(R) Arc(TM) A770 Graphics (dGPU)",
            ("GPU.0", "OPTIMIZATION_CAPABILITIES"): ["FP32", "FP16"],
            ("GPU.0", "GPU_DEVICE_TOTAL_MEM_SIZE"): 16 * GIB,
        },
    )
    found = hw.detect_openvino(ov)
    assert found.available and found.version == "2024.4.0"
    cpu, gpu = found.devices
    assert (cpu.index, cpu.name) == (0, "CPU")
    assert cpu.properties == {"FULL_DEVICE_NAME": "Intel(R) Xeon(R) Platinum 8480+", "OPTIMIZATION_CAPABILITIES": "FP32 BF16 INT8"}
    assert (gpu.index, gpu.name, gpu.total_memory_bytes) == (1, "GPU.0", 16 * GIB)
    assert gpu.properties["OPTIMIZATION_CAPABILITIES"] == "FP32 FP16"


def test_openvino_property_read_that_raises_is_left_out():
    ov = fake_openvino(
        ["NPU"],
        {("NPU", "FULL_DEVICE_NAME"): "Intel(R) AI Boost", ("NPU", "OPTIMIZATION_CAPABILITIES"): RuntimeError("unsupported property")},
    )
    found = hw.detect_openvino(ov)
    assert found.available
    assert found.devices[0].properties == {"FULL_DEVICE_NAME": "Intel(R) AI Boost"}


def test_openvino_not_installed_or_without_devices_or_failing():
    assert hw.detect_openvino(None).reason == "openvino is not installed"
    empty = hw.detect_openvino(fake_openvino([], {}))
    assert not empty.available and empty.reason == "openvino lists no devices"

    def broken_core():
        raise RuntimeError("Cannot load library libopenvino_intel_cpu_plugin.so")

    failing = hw.detect_openvino(SimpleNamespace(Core=broken_core, get_version=lambda: "2024.4.0"))
    assert not failing.available and "libopenvino_intel_cpu_plugin" in failing.reason


def test_openvino_version_falls_back_to_dunder_version():
    ov = fake_openvino(["CPU"], {})
    ov.get_version = lambda: (_ for _ in ()).throw(AttributeError("get_version"))
    found = hw.detect_openvino(ov)
    assert found.available and found.version == "2024.4.0" and found.devices[0].properties == {}


# --- QNN ---------------------------------------------------------------------------------


def no_library(name):
    return None


def ort_with(*providers):
    return SimpleNamespace(get_available_providers=lambda: list(providers))


def test_qnn_via_sdk_root(tmp_path):
    found = hw.detect_qnn({"QNN_SDK_ROOT": str(tmp_path)}, None, no_library)
    assert found.available and f"QNN_SDK_ROOT={tmp_path}" in found.reason


def test_qnn_via_library_under_sdk_root(tmp_path):
    lib = tmp_path / "lib" / "aarch64-android" / "libQnnHtp.so"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"")
    found = hw.detect_qnn({"QNN_SDK_ROOT": str(tmp_path)}, None, no_library)
    assert found.available and f"libQnnHtp.so at {lib}" in found.reason


def test_qnn_via_find_library():
    found = hw.detect_qnn({}, None, lambda name: "/usr/lib/libQnnHtp.so" if name == "QnnHtp" else None)
    assert found.available and found.reason == "found libQnnHtp.so at /usr/lib/libQnnHtp.so"


def test_qnn_via_onnxruntime_provider():
    found = hw.detect_qnn({}, ort_with("QNNExecutionProvider", "CPUExecutionProvider"), no_library)
    assert found.available and found.reason == "found onnxruntime has QNNExecutionProvider"


def test_qnn_absent_says_what_was_looked_for():
    found = hw.detect_qnn({}, ort_with("CPUExecutionProvider"), no_library)
    assert not found.available
    assert found.reason == "QNN_SDK_ROOT is not set, libQnnHtp.so not found and onnxruntime has no QNNExecutionProvider"
    gone = hw.detect_qnn({"QNN_SDK_ROOT": "/nonexistent/qnn"}, None, None)
    assert gone.reason == "QNN_SDK_ROOT=/nonexistent/qnn is not a directory, libQnnHtp.so not found and onnxruntime is not installed"


def test_qnn_probes_that_raise_are_not_found():
    def broken_find(name):
        raise OSError("ldconfig missing")

    def broken_providers():
        raise RuntimeError("onnxruntime build is broken")

    found = hw.detect_qnn({}, SimpleNamespace(get_available_providers=broken_providers), broken_find)
    assert not found.available and "onnxruntime build is broken" in found.reason


# --- CPU ---------------------------------------------------------------------------------

XEON_CPUINFO = "".join(
    f"processor\t: {n}\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
    f"physical id\t: 0\ncore id\t\t: {n // 2}\n"
    "flags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16 avx512_vnni amx_bf16 amx_tile amx_int8\n\n"
    for n in range(4)
)
MEMINFO = "MemTotal:       16384000 kB\nMemFree:         1000000 kB\nMemAvailable:    8192000 kB\n"


def test_cpu_info_from_proc_files(tmp_path):
    (tmp_path / "cpuinfo").write_text(XEON_CPUINFO)
    (tmp_path / "meminfo").write_text(MEMINFO)
    cpu = hw.cpu_info(str(tmp_path / "cpuinfo"), str(tmp_path / "meminfo"), psutil=None)
    assert (cpu.vendor, cpu.model) == ("GenuineIntel", "Intel(R) Xeon(R) Platinum 8480+")
    assert cpu.physical_cores == 2  # 4 logical processors on 2 (physical id, core id) pairs
    assert (cpu.memory_total_bytes, cpu.memory_available_bytes) == (16384000 * 1024, 8192000 * 1024)
    assert cpu.avx2 and cpu.avx512 and cpu.amx
    assert cpu.flags == ["avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile", "fma"]


def test_cpu_info_arm_with_psutil(tmp_path):
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm crc32\nCPU implementer\t: 0x41\n")
    psutil = SimpleNamespace(cpu_count=lambda logical: 8, virtual_memory=lambda: SimpleNamespace(total=32 * GIB, available=20 * GIB))
    cpu = hw.cpu_info(str(tmp_path / "cpuinfo"), str(tmp_path / "missing"), psutil=psutil)
    assert cpu.model and cpu.vendor  # from platform, as /proc/cpuinfo on arm64 has no model name
    assert cpu.physical_cores == 8 and cpu.memory_total_bytes == 32 * GIB
    assert cpu.flags == ["asimd"] and not (cpu.avx2 or cpu.avx512 or cpu.amx)


def test_cpu_info_without_proc_or_psutil(tmp_path):
    cpu = hw.cpu_info(str(tmp_path / "none"), str(tmp_path / "none"), psutil=None)
    assert cpu.logical_cores >= 1 and cpu.physical_cores is None and cpu.memory_total_bytes is None
    assert cpu.flags == []


def test_cpu_platform(tmp_path):
    (tmp_path / "cpuinfo").write_text(XEON_CPUINFO)
    cpu = hw.cpu_info(str(tmp_path / "cpuinfo"), str(tmp_path / "none"), psutil=None)
    found = hw.detect_cpu(cpu)
    assert found.available and found.reason.startswith(f"{cpu.logical_cores} logical cores")
    assert [(d.index, d.name) for d in found.devices] == [(0, "Intel(R) Xeon(R) Platinum 8480+")]


# --- the real machine --------------------------------------------------------------------


@pytest.fixture(scope="module")
def report() -> NodeReport:
    return hw.detect(node_id="node-1", node_ip="10.0.0.1")


def test_detect_on_this_machine(report):
    assert set(report.platforms) == set(PLATFORMS)
    assert report.available("cpu") and report.cpu.logical_cores >= 1 and report.cpu.model
    assert (report.node_id, report.node_ip) == ("node-1", "10.0.0.1") and report.hostname
    for name, found in report.platforms.items():
        assert found.available or found.reason, f"{name} is absent without a reason"
        assert not found.available or name == "qnn" or found.devices, f"{name} is available without devices"
    assert NodeReport.model_validate(report.model_dump()) == report
    assert NodeReport.model_validate_json(report.model_dump_json()) == report


def test_cpu_info_on_this_machine():
    assert hw.cpu_info().model  # what the bench code records


def test_detection_does_not_import_ray():
    code = "import sys, hardware.detect; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
