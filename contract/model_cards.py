"""The model object of /v1/models (OpenAI's, with hfserve's extensions: status, where the
replicas run, run-time loads)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .protocol import OpenAIResponse

# idle: scaled to zero (min_replicas 0); the next request starts a replica and waits for it.
ModelStatus = Literal["ready", "idle", "loading", "pending", "failed", "unavailable", "circuit_open", "circuit_half_open"]


class ModelReplica(OpenAIResponse):
    """Where one replica of a model runs (hfserve's extension of the model object)."""

    id: str
    node_id: str | None = None
    node_ip: str | None = None
    hostname: str | None = None
    platform: str
    device: str


class ModelCapabilities(OpenAIResponse):
    """What a generation model's API can do here, which depends on its engine (hfserve's
    extension; absent for other tasks)."""

    structured_outputs: bool  # response_format json_object/json_schema, vLLM's structured_outputs
    logit_bias: bool
    logprobs: bool = False
    top_logprobs: int = 0  # the most alternatives per token it gives (chat top_logprobs, completions logprobs)
    tool_parser: str | None = None  # None: no tool calling
    reasoning_parser: str | None = None


class ModelCard(OpenAIResponse):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    task: str | None
    status: ModelStatus
    # hfserve's extensions: where the model runs (null until a replica answered).
    alias_of: str | None = Field(None, description="For an alias: the model it names, which serves its requests.")
    backend: str | None = None
    device: str | None = None
    platform: str | None = None
    replicas: list[ModelReplica] = []
    capabilities: ModelCapabilities | None = None
    # Run-time models (POST /models/load): how long the load took; why it waits or failed, in a
    # few public words (`reason`) and, for admin keys only, in detail (`error`).
    loaded_at_runtime: bool = False
    load_seconds: float | None = None
    reason: str | None = None
    error: str | None = None


class ModelList(OpenAIResponse):
    object: Literal["list"] = "list"
    data: list[ModelCard]
