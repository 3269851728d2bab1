"""What one node has: a report per platform, each either available with its devices or
absent with the reason. Pydantic, because reports cross Ray (per-node actors -> replicas and
the ingress) and are rendered as JSON by /status and `hfserve hardware --json`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# Every platform a report covers, fastest first: `hardware: auto` tries them in this order.
PLATFORMS: tuple[str, ...] = ("cuda", "rocm", "mps", "openvino", "qnn", "cpu")


class _Report(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Device(_Report):
    index: int
    name: str
    total_memory_bytes: int | None = None
    free_memory_bytes: int | None = None
    compute_capability: str | None = Field(None, description="CUDA 'major.minor', e.g. '9.0'.")
    bf16: bool | None = None
    # OpenVINO: FULL_DEVICE_NAME, OPTIMIZATION_CAPABILITIES (space-separated), ...
    properties: dict[str, str] = {}


class Platform(_Report):
    available: bool
    reason: str = Field("", description="Why it is absent, or what was found.")
    version: str | None = Field(None, description="The runtime's version (CUDA, HIP, OpenVINO, QNN SDK).")
    devices: list[Device] = []


class CpuReport(_Report):
    vendor: str
    model: str
    logical_cores: int
    physical_cores: int | None = None
    memory_total_bytes: int | None = None
    memory_available_bytes: int | None = None
    avx2: bool = False
    avx512: bool = False
    amx: bool = False
    flags: list[str] = Field([], description="The CPU flags that matter to inference kernels.")


class NodeReport(_Report):
    hostname: str
    node_id: str | None = Field(None, description="The Ray node id, when detected inside a Ray cluster.")
    node_ip: str | None = None
    cpu: CpuReport
    platforms: dict[str, Platform] = Field(description="One entry per name in PLATFORMS.")
    vllm: str | None = Field(None, description="The version of vLLM this node's environment imports, if any "
                             "(`backend: auto` runs text generation on it on cuda and rocm).")
    detected_at: float = Field(description="Unix time of the detection.")

    def available(self, platform: str) -> bool:
        found = self.platforms.get(platform)
        return bool(found and found.available)
