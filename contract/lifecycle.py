"""Run-time model lifecycle: what POST /models/load and /models/unload accept and answer, and
the record the state actor keeps of each run-time model (serve_app/state/lifecycle/).

A run-time model is a Serve application like a config-file model, deployed through the Serve
API instead of serve_config.yaml; its record (SQLite, beside the API keys) is what brings it
back after a restart.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from . import tasks
from .config import HARDWARE_PREFERENCE, MODEL_ID_PATTERN, ModelAppArgs

# What the load request names itself; everything else a model takes goes in `options`.
_TOP_LEVEL_ARGS = frozenset({"source", "task", "hardware", "backend"})

# The values ModelAppArgs accepts for `hardware`, as the schema states them: `auto` alone, or
# platforms in order of preference, each once.
Platform = Literal[HARDWARE_PREFERENCE]  # type: ignore[valid-type]
Hardware = Literal[("auto", *HARDWARE_PREFERENCE)]  # type: ignore[valid-type]
HardwareList = Annotated[list[Platform], Field(min_length=1, json_schema_extra={"uniqueItems": True})]


def _installed_tasks(schema: dict[str, Any]) -> None:
    """`task`'s enum: the tasks installed where the document is made (plug-ins included), which
    are the ones its validator accepts."""
    for branch in schema.get("anyOf", [schema]):
        if branch.get("type") == "string":
            branch["enum"] = tasks.task_names()


# pending: deployed, but its replica waits for resources no node has free.
RuntimeState = Literal["loading", "pending", "ready", "failed", "unloading"]


class Autoscaling(BaseModel):
    """The subset of Serve's autoscaling_config a run-time model may set. min_replicas 0 is
    scale to zero: the model's replica stops when idle and the next request starts one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_replicas: int = Field(1, ge=0, le=64)
    max_replicas: int = Field(1, ge=1, le=64)
    initial_replicas: int | None = Field(None, ge=0, le=64)
    target_ongoing_requests: float = Field(2.0, gt=0, le=10_000)
    upscale_delay_s: float = Field(0.0, ge=0, le=3600)
    downscale_delay_s: float = Field(300.0, ge=0, le=86400,
                                     description="How long a model is idle before it scales down (to zero with min_replicas 0).")
    look_back_period_s: float = Field(30.0, ge=1, le=3600, description="The window Serve averages ongoing requests over.")

    @model_validator(mode="after")
    def _ordered(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        if self.initial_replicas is not None and not self.min_replicas <= self.initial_replicas <= self.max_replicas:
            raise ValueError("initial_replicas must lie between min_replicas and max_replicas")
        return self

    def serve_config(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class LoadModelRequest(BaseModel):
    """POST /models/load."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(..., pattern=MODEL_ID_PATTERN, description="The id clients will send.")
    source: str = Field(..., min_length=1, max_length=4096)
    task: str | None = Field(None, description="Inferred from the model's config.json when omitted.",
                             json_schema_extra=_installed_tasks)
    hardware: Hardware | HardwareList | None = Field(None, description="auto, or platforms in order of preference.")
    backend: Literal["auto", "openvino", "transformers"] | None = None
    autoscaling: Autoscaling | None = None
    load_timeout_s: float | None = Field(None, gt=0, le=86400, description="How long the load may take before it "
                                         "ends failed (default, and most: the ingress's model_load_timeout_s).")
    options: dict[str, Any] = Field({}, description="Any other ModelAppArgs field (num_cpus, max_model_len, ...).")

    @field_validator("options")
    @classmethod
    def _no_shadowing(cls, value: dict[str, Any]) -> dict[str, Any]:
        shadowed = sorted(_TOP_LEVEL_ARGS & value.keys())
        if shadowed:
            raise ValueError(f"options must not repeat {', '.join(shadowed)}: set them at the top level")
        return value

    def model_args(self) -> dict[str, Any]:
        """The model's ModelAppArgs as a plain dict (validated by ModelAppArgs)."""
        named = {"source": self.source, "task": self.task, "hardware": self.hardware, "backend": self.backend}
        return {**self.options, **{key: value for key, value in named.items() if value is not None}}

    def validated_args(self) -> ModelAppArgs:
        return ModelAppArgs.model_validate(self.model_args())


class UnloadModelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(..., pattern=MODEL_ID_PATTERN)


class RuntimeModel(BaseModel):
    """One run-time model, as the state actor records it."""

    model_config = ConfigDict(extra="forbid")

    model: str
    args: dict[str, Any]  # ModelAppArgs fields (task resolved when it could be)
    autoscaling: Autoscaling | None = None
    state: RuntimeState = "loading"
    error: str | None = None  # why it failed or waits, in detail (paths, exception text): admins only
    reason: str | None = None  # the same in a few public words, for every caller of /v1/models
    requested_at: float
    load_timeout_s: float | None = None  # a load not ready this long after requested_at fails
    ready_at: float | None = None
    estimated_bytes: int | None = None  # weights x dtype, before loading
    last_used: float = 0.0  # unix time of the last request the ingress replicas reported
    unloading_since: float | None = None

    @property
    def load_seconds(self) -> float | None:
        return round(self.ready_at - self.requested_at, 2) if self.ready_at is not None else None

    def same_spec(self, other: RuntimeModel) -> bool:
        return self.args == other.args and self.autoscaling == other.autoscaling


class LifecycleReply(BaseModel):
    """The answer of POST /models/load and /models/unload."""

    model: str
    status: Literal["loading", "pending", "ready", "failed", "unloading", "unloaded"]
    message: str | None = None
    evicted: list[str] = []
    estimated_bytes: int | None = None


class RuntimeModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
