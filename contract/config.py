"""Typed configuration: application args from serve_config.yaml and HF_SERVER_* overrides.

This is the only module that reads the environment. Everything else receives the resolved
pydantic objects, so a typo in YAML or in an environment variable fails where it is read,
naming the field.

Precedence, highest first: HF_SERVER_* environment variables, the application ``args`` in
serve_config.yaml, the defaults below.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from . import tasks
from .old_names import TakesOldNames, deprecated

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
Backend = Literal["auto", "openvino", "transformers", "vllm"]
# The platforms a model may run on (hardware/report.py PLATFORMS), fastest first: `auto` is
# this whole list, in this order.
HARDWARE_PREFERENCE: tuple[str, ...] = ("cuda", "rocm", "mps", "openvino", "qnn", "cpu")

# The deployment names the builders create; serve_config.yaml refers to them under
# `deployments:`, and the ingress recognises model applications by MODEL_DEPLOYMENT_NAME.
INGRESS_DEPLOYMENT_NAME = "Ingress"
MODEL_DEPLOYMENT_NAME = "ModelServer"
MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"  # anchored for JSON Schema
_MODEL_ID = re.compile(MODEL_ID_PATTERN.strip("^$"))


# Serve's gRPC calls between deployments keep gRPC's 4 MiB message default unless this variable
# is set in both replicas' processes; a documented maximum (2048 embeddings of 384 floats) is
# over it. 256 MiB fits 2048 vectors of up to ~24k dimensions (docs/operations.md).
MODEL_CALL_MESSAGE_ENV = "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH"
MODEL_CALL_MESSAGE_BYTES = 256 * 1024 * 1024


def model_call_env_vars() -> dict[str, str]:
    """The environment a replica needs for model calls of the documented maximum size."""
    return {MODEL_CALL_MESSAGE_ENV: str(MODEL_CALL_MESSAGE_BYTES)}


def valid_model_id(name: str) -> bool:
    # fullmatch, not match: Python's `$` also matches before a trailing newline.
    return _MODEL_ID.fullmatch(name) is not None


class StrictModel(TakesOldNames):
    """Config models reject unknown keys so that a typo fails at deploy time."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class EnvOverrides(BaseSettings):
    """HF_SERVER_* environment variables. Unset means "keep the config file's value"."""

    model_config = SettingsConfigDict(env_prefix="HF_SERVER_", extra="ignore", frozen=True)

    host: str | None = Field(None, description="HTTP bind address of the Serve proxy.")
    port: int | None = Field(None, ge=1, le=65535, description="HTTP port of the Serve proxy.")
    log_level: LogLevel | None = Field(None, description="Log level of every replica.")
    log_format: Literal["json", "text"] | None = Field(None, description="Replica log encoding.")
    config: Path | None = Field(None, description="Path of the serve_config.yaml to deploy.")
    workers: int | None = Field(None, ge=1, le=64, description="Number of ingress replicas.")
    cache_dir: Path | None = Field(None, description="Where converted models are cached.")
    enable_batching: bool | None = Field(None, description="Batch concurrent requests of every encoder model.")
    batch_max_size: int | None = Field(None, ge=1, le=4096, description="Inputs per batch.")
    batch_timeout_s: float | None = Field(None, ge=0, le=10, description="How long a batch waits to fill, in seconds.")
    batch_timeout_ms: float | None = Field(
        None, ge=0, le=10_000, description="Deprecated: HF_SERVER_BATCH_TIMEOUT_S in milliseconds, for one release."
    )
    max_request_body_bytes: int | None = Field(
        None, ge=1024, description="Largest accepted request body; larger bodies get a 413."
    )
    dashboard_port: int | None = Field(None, ge=1, le=65535, description="Ray dashboard port.")
    dashboard_host: str | None = Field(None, description="Ray dashboard bind address (default 127.0.0.1).")
    enable_auth: bool | None = Field(None, description="Require API keys (default true).")
    api_key: SecretStr | None = Field(None, description="A static admin key (replaces the generated admin.key).")
    state_dir: Path | None = Field(None, description="Where API keys (SQLite) and admin.key live.")
    enable_caching: bool | None = Field(None, description="Response cache on or off.")
    enable_circuit_breaker: bool | None = Field(None, description="Per-model circuit breakers on or off.")
    enable_metrics: bool | None = Field(None, description="Record hf_server_* metrics (ingress and models).")
    haproxy: bool | None = Field(
        None, description="HTTP through Ray's HAProxy with direct ingress (RAY_SERVE_ENABLE_HA_PROXY) instead of Ray's "
        "Python proxy. On unless false, where the host has an HAProxy binary; applies to the Ray cluster "
        "`hfserve serve` starts (serve_app/cli/haproxy.py, docs/performance.md).",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _old_batch_timeout(self) -> EnvOverrides:
        if self.batch_timeout_ms is not None:  # a new unit too, so not an alias of batch_timeout_s
            deprecated("HF_SERVER_BATCH_TIMEOUT_MS", "HF_SERVER_BATCH_TIMEOUT_S", self.batch_timeout_s is not None,
                       f" (in seconds: {self.batch_timeout_ms / 1000.0:g} for {self.batch_timeout_ms:g} ms)")
        return self


def read_env() -> EnvOverrides:
    """Read HF_SERVER_* now (never at import time, so tests and replicas see their own env)."""
    return EnvOverrides()


def default_state_dir() -> Path:
    return Path.home() / ".hfserve"


def default_cache_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "hfserve"


class ModelAppArgs(StrictModel):
    """`args` of one model application (serve_app.app:build_model_app).

    The application's name in serve_config.yaml is the model id clients send.
    """

    source: str = Field(
        ...,
        min_length=1,
        description="Where the weights come from: a local HF directory, an HF hub id "
        "('org/name' or 'hub:org/name'), or 'package:<package>/<file>' for a file shipped "
        "inside an installed Python package (GGUF files are converted once and cached).",
    )
    task: str | None = Field(
        None,
        description="What the model serves: a task from the task table (`hfserve discover` lists them: "
        "text-generation, embedding, and any installed plug-in). Omitted, it is inferred when the model is "
        "deployed from its config.json and files (a causal LM is text-generation, a sentence-transformers "
        "model or a bare encoder is embedding); a model no task or several tasks claim is an error.",
    )
    backend: Backend = Field(
        "auto",
        description="Engine family. auto picks OpenVINO on CPU nodes where it is installed, vLLM on GPU nodes "
        "where it is (text generation), else transformers. vllm: installed on the node or by a runtime_env.",
    )
    hardware: tuple[str, ...] = Field(
        ("auto",),
        description="Where the model runs: auto, or one of cuda, rocm, mps, openvino, qnn, cpu, or a list "
        "of them in order of preference. auto is cuda, rocm, mps, openvino, qnn, cpu: the first one "
        "that a node has (and that has an engine) wins. A single value is strict: no fallback.",
    )
    num_cpus: float = Field(0.5, ge=0, le=1024, description="CPUs Ray reserves per replica.")
    num_gpus: float | None = Field(
        None, ge=0, le=64, description="GPUs Ray reserves per replica when the model is placed on cuda or rocm "
        "(a fraction shares one; default: the share its estimated memory needs). Other platforms reserve none.",
    )
    resources: dict[str, float] = Field(
        {}, description="Custom Ray resources per replica, e.g. {worker_node: 0.01} to pin a model to "
        "nodes started with --resources.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    owned_by: str = Field("hfserve", description="The owned_by field of /v1/models.")
    request_timeout_s: float = Field(
        10, gt=0, le=86400, description="The longest the ingress waits for the model to show progress: for "
        "the answer to a short call (up to max_batch_size embedding inputs), for each chunk of a stream, "
        "and for each heartbeat of a long call (non-streaming generation, larger embedding requests), "
        "which the model sends while it works. No progress for this long is a 504, so a request to a "
        "replica that died with its node is answered, not left hanging.",
    )
    cache_dir: Path | None = Field(None, description="Conversion cache (default HF_SERVER_CACHE_DIR or ~/.cache/hfserve).")
    num_threads: int | None = Field(
        None, ge=1, le=1024, description="Inference threads per replica (default: all cores)."
    )
    # --- generation ---
    max_model_len: int | None = Field(
        None, ge=16, description="Context length; defaults to the model's max_position_embeddings."
    )
    default_max_tokens: int | None = Field(
        None, ge=1, description="max_tokens when a request sets none (default: the rest of the context)."
    )
    max_num_seqs: int = Field(64, ge=1, le=4096, description="Sequences decoded together.")
    max_num_batched_tokens: int = Field(
        256, ge=16, le=65536, description="Tokens per engine step (prefill chunks plus decodes)."
    )
    kv_cache_gb: int = Field(1, ge=1, le=1024, description="KV-cache size of the generation engine, in whole GB.")
    stream_interval: int | Literal["auto"] = Field(
        "auto",
        description="Streamed tokens per chunk after the first (as vLLM's --stream-interval). 'auto' sends "
        "every token while few sequences run and up to 8 per chunk as more share the engine, so the "
        "serving stack's per-chunk work stays bounded as concurrency grows.",
    )
    enable_prefix_caching: bool = Field(
        True, description="Reuse the KV cache of shared prompt prefixes (system prompts, chat templates)."
    )
    tool_parser: Literal["auto", "hermes", "llama3_json", "pythonic"] | None = Field(
        "auto", description="How tool calls are read from the model's text (tool_choice auto), as vLLM's "
        "--tool-call-parser; 'auto': the chat template's format, if it has one.")
    reasoning_parser: Literal["deepseek_r1", "qwen3"] | None = Field(None, description="Move the model's "
                                                                      "<think> text into reasoning_content (vLLM's --reasoning-parser).")
    weight_format: Literal["fp32", "fp16", "int8"] = Field(
        "fp32", description="Weights of the exported OpenVINO IR (int8 = NNCF weight compression)."
    )
    inference_precision: Literal["auto", "f32"] = Field(
        "auto", description="What OpenVINO generation computes and keeps its KV cache in (vLLM: its dtype): 'auto', the fastest "
        "(bf16 where it has AVX512-BF16 or AMX); 'f32', slower, for log-probabilities as the model gives them.")
    # --- batching: embedding, rerank and text-classification batch with the SlotBatcher
    # (deployments/slot_batching.py); generation batches continuously in its engine (OpenVINO
    # GenAI's or transformers' manager, sized by the fields above) and reads neither field below ---
    enable_batching: bool = Field(True, description="Batch concurrent requests of an encoder model (HF_SERVER_ENABLE_BATCHING).")
    enable_metrics: bool = Field(True, description="Record the serving metrics: time to first token, tokens, "
                                 "engine queue (HF_SERVER_ENABLE_METRICS).")
    max_batch_size: int | None = Field(
        None, ge=1, le=4096, description="Most inputs (or sequences) in one batch "
        "(default HF_SERVER_BATCH_MAX_SIZE or 32).",
    )
    batch_wait_timeout_s: float | None = Field(
        None, ge=0, le=10, description="How long a batch with room waits for more, in seconds "
        "(default HF_SERVER_BATCH_TIMEOUT_S or 0.005).",
    )
    # --- embeddings (encoder_streams: rerank and text-classification too) ---
    supports_dimensions: bool = Field(
        False, description="Matryoshka model: `dimensions` truncates and re-normalises vectors."
    )
    max_input_tokens: int | None = Field(
        None, ge=1, description="Longest embedding input; defaults to the sentence-transformers "
        "max_seq_length or the model's max_position_embeddings.",
    )
    encoder_streams: int | Literal["auto"] = Field(
        "auto",
        description="OpenVINO encoders (embedding, rerank, text-classification): batches inferred at once, each on "
        "its share of the cores, and the task's batcher runs as many. 1 runs one batch at a time on every core (a lone request's "
        "lowest latency); auto lets OpenVINO's THROUGHPUT hint choose (2 on 2 cores), which costs less "
        "CPU per small batch and keeps every core busy under load (docs/performance.md).",
    )
    # --- rerank ---
    max_rerank_documents: int = Field(
        1000, ge=1, le=10_000, description="Most documents in one /v1/rerank request (400 above).",
    )

    # --- fallbacks (the ingress: serve_app/ingress/gateway/fallbacks.py; LiteLLM's names) ---
    fallbacks: tuple[str, ...] = Field(
        (), max_length=16, description="Models of the same task that serve a request, tried in order, when this "
        "one cannot: its circuit breaker is open, its queue is full, it has no ready replica, or it is scaled to zero "
        "and the request would wait past fallback_after_s. Only those the caller's key may use are tried. The answer "
        "names the model that served (`model`) and carries `x-hfserve-fallback: <this model>`; a stream is never "
        "retried once a chunk went out. In a config file, models of the same file.",
    )
    context_fallbacks: tuple[str, ...] = Field(
        (), max_length=16, description="Models of the same task tried in order when a request is longer than this "
        "model's context (LiteLLM's context_window_fallbacks): models with a longer one.",
    )
    fallback_after_s: float | None = Field(
        None, ge=0, le=86400, description="A model scaled to zero: how long a request waits for its replica to "
        "start before it goes to `fallbacks` (the start goes on; when no fallback serves, the request waits for it "
        "after all). Unset: requests wait for the start (model_load_timeout_s).",
    )

    @field_validator("fallbacks", "context_fallbacks")
    @classmethod
    def _fallback_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [name for name in value if not valid_model_id(name)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a model id (letters, digits, . _ : -)")
        if len(set(value)) != len(value):
            raise ValueError(f"lists a model twice: {list(value)}")
        return value

    @field_validator("stream_interval")
    @classmethod
    def _positive_interval(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 64:
            raise ValueError("stream_interval must be 'auto' or between 1 and 64")
        return value

    @field_validator("encoder_streams")
    @classmethod
    def _positive_streams(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 256:
            raise ValueError("encoder_streams must be 'auto' or between 1 and 256")
        return value

    @field_validator("hardware", mode="before")
    @classmethod
    def _hardware_list(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("hardware")
    @classmethod
    def _known_hardware(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        known = ("auto", *HARDWARE_PREFERENCE)
        unknown = [name for name in value if name not in known]
        if unknown or not value:
            raise ValueError(
                f"unknown hardware {', '.join(map(repr, unknown)) or '(empty list)'}; choose auto or from: "
                + ", ".join(HARDWARE_PREFERENCE)
            )
        if "auto" in value and len(value) > 1:
            raise ValueError("hardware 'auto' is the whole preference list; it cannot be combined with others")
        if len(set(value)) != len(value):
            raise ValueError(f"hardware lists a platform twice: {list(value)}")
        return value

    @property
    def hardware_preference(self) -> tuple[str, ...]:
        """The platforms to try, in order (auto expanded)."""
        return HARDWARE_PREFERENCE if self.hardware == ("auto",) else self.hardware

    @field_validator("source")
    @classmethod
    def _source_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("source must not be blank")
        return value.strip()

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str | None) -> str | None:
        if value is None:
            return None  # inferred at deploy (deployments/task_inference.py)
        known = tasks.task_names()
        if value not in known:
            raise ValueError(f"unknown task {value!r}; known tasks: {', '.join(known)}")
        return value

    @model_validator(mode="after")
    def _fits_its_task(self) -> ModelAppArgs:
        tasks.check_args(self)  # the task's own rules, and no other task's fields (once it has a task)
        return self

    def with_env(self, env: EnvOverrides) -> ModelAppArgs:
        updates: dict[str, Any] = {}
        if env.enable_batching is not None:
            updates["enable_batching"] = env.enable_batching
        if env.enable_metrics is not None:
            updates["enable_metrics"] = env.enable_metrics
        if env.batch_max_size is not None:
            updates["max_batch_size"] = env.batch_max_size
        timeout_s = env.batch_timeout_s if env.batch_timeout_ms is None else env.batch_timeout_ms / 1000.0
        if timeout_s is not None:
            updates["batch_wait_timeout_s"] = timeout_s
        if env.cache_dir is not None:
            updates["cache_dir"] = env.cache_dir
        return self.model_copy(update=updates)

    @property
    def effective_cache_dir(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()

    @property
    def effective_max_batch_size(self) -> int:
        if not self.enable_batching:
            return 1
        return self.max_batch_size or 32

    @property
    def effective_batch_wait_timeout_s(self) -> float:
        if not self.enable_batching:
            return 0.0
        return 0.005 if self.batch_wait_timeout_s is None else self.batch_wait_timeout_s


class FallbackConfigError(ValueError):
    """A model's fallback that cannot be one; `field` is the arg that names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def check_fallbacks(model: str, args: ModelAppArgs, task_of: Mapping[str, str | None]) -> None:
    """Raise FallbackConfigError, naming the field, when a fallback of `model` is the model
    itself, not a model of `task_of` (every known model's task: None where it is not known
    yet), or a model of another task (its answers would not fit the request)."""
    for field in ("fallbacks", "context_fallbacks"):
        for other in getattr(args, field):
            if other == model:
                raise FallbackConfigError(field, f"model '{model}' cannot be its own fallback")
            if other not in task_of:
                raise FallbackConfigError(field, f"'{other}' is not a model of this server")
            task = task_of[other]
            if args.task is not None and task is not None and task != args.task:
                raise FallbackConfigError(field, f"'{other}' is a model of task {task} and '{model}' of task "
                                                 f"{args.task}; a fallback must be of the same task")
