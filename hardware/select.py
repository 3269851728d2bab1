"""Which platform, engine and device a model runs on: pure functions of a node report and
the model's `hardware` preference and `backend`.

A platform maps to an engine family: OpenVINO runs the `openvino` engines on its CPU device;
cuda, rocm (torch's ROCm builds expose devices as "cuda"), mps and cpu run the `transformers`
engines; vLLM runs text generation on cuda, rocm and cpu where its environment has it. A
platform that is detected but has no engine yet (qnn; OpenVINO's GPU and NPU
devices are not used) is an error when asked for by name, and is skipped, with the reason
recorded, by a preference list; never a silent fallback.
"""

from __future__ import annotations

from dataclasses import dataclass

from .report import NodeReport

# platform -> (engine family, torch/OpenVINO device, dtype)
ENGINES: dict[str, tuple[str, str, str]] = {
    "cuda": ("transformers", "cuda", "float16"),
    "rocm": ("transformers", "cuda", "float16"),
    "mps": ("transformers", "mps", "float16"),
    "openvino": ("openvino", "cpu", "float32"),
    "cpu": ("transformers", "cpu", "float32"),
}
GPU_PLATFORMS = ("cuda", "rocm")  # the ones Ray schedules as num_gpus
# Where vLLM runs (its CUDA, ROCm and CPU builds): `backend: vllm` by name, or auto on a GPU
# node whose environment has it. Its dtype "auto" is the model's own (bf16 or fp16).
VLLM_PLATFORMS = ("cuda", "rocm", "cpu")


class BackendUnavailableError(RuntimeError):
    """The model cannot run here; the message names the model, the hardware and why."""


class NotSupportedYetError(BackendUnavailableError):
    """The platform is there, but hfserve has no engine for it yet."""


@dataclass(frozen=True)
class BackendChoice:
    platform: str  # an entry of hardware.report.PLATFORMS
    backend: str  # engine family: "openvino" | "transformers" | "vllm"
    device: str  # "cpu" | "cuda" | "mps"
    dtype: str  # torch dtype name for transformers; informational for OpenVINO
    reason: str


def engine_platforms(backend: str, preference: tuple[str, ...]) -> list[str]:
    """The platforms of `preference` the engine family `backend` can run on, in order."""
    if backend == "auto":
        return list(preference)
    if backend == "vllm":
        return [p for p in preference if p not in ENGINES or p in VLLM_PLATFORMS]
    return [p for p in preference if p not in ENGINES or ENGINES[p][0] == backend]


def check_supported(model: str, platform: str, present: bool) -> None:
    if platform not in ENGINES:
        found = "is detected" if present else "was asked for"
        raise NotSupportedYetError(
            f"model '{model}': hardware '{platform}' {found}, but hfserve has no {platform} engine yet "
            f"(supported: {', '.join(ENGINES)})"
        )


def select_backend(
    model: str, preference: tuple[str, ...], backend: str, report: NodeReport, gpus_assigned: int | None = None,
    auto_vllm: bool = False,
) -> BackendChoice:
    """The first platform of `preference` this node has and `backend` can use.

    `gpus_assigned` is what Ray gave the replica (ray.get_gpu_ids()); None outside Ray. A GPU
    platform needs at least one, since Ray hides the GPUs of actors that reserve none.
    `auto_vllm`: whether auto may pick vLLM on a GPU node that has it (text generation; encoders
    stay on transformers, as vLLM runs only some of them).
    """
    candidates = engine_platforms(backend, preference)
    if not candidates:
        raise BackendUnavailableError(
            f"model '{model}': backend '{backend}' cannot run on hardware {', '.join(preference)}"
        )
    strict = len(preference) == 1
    skipped: list[str] = []
    for platform in candidates:
        present = report.available(platform)
        if strict:
            check_supported(model, platform, present)
        if not present:
            found = report.platforms.get(platform)
            skipped.append(f"{platform}: {found.reason if found else 'not reported'}")
            continue
        if platform not in ENGINES:
            skipped.append(f"{platform}: detected, no engine yet")
            continue
        if platform in GPU_PLATFORMS and gpus_assigned == 0:
            skipped.append(f"{platform}: present, but this replica reserved no GPU (num_gpus)")
            continue
        family, device, dtype = ENGINES[platform]
        reason = "requested" if strict else "; ".join(["first available", *skipped])
        if backend == "vllm" or (backend == "auto" and platform in GPU_PLATFORMS and report.vllm and auto_vllm):
            family, dtype = "vllm", "auto"
            reason += f"; vLLM {report.vllm}" if report.vllm else ""
        return BackendChoice(platform, family, device, dtype, reason)
    raise BackendUnavailableError(
        f"model '{model}': none of hardware {', '.join(candidates)} (backend {backend}) is usable on node "
        f"{report.hostname}: {'; '.join(skipped)}"
    )
