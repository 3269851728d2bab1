"""The ingress application's args (serve_config.yaml `args` of build_ingress_app), with the
HF_SERVER_* overrides contract/config.py reads applied by `with_env`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, field_validator

from .config import EnvOverrides, StrictModel, default_state_dir, valid_model_id

_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}")  # an RFC 9110 token


class IngressArgs(StrictModel):
    """`args` of the ingress application (serve_app.app:build_ingress_app)."""

    max_request_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest accepted request body in bytes (413 above)."
    )
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, le=1024 * 1024,
        description="Largest total size of a request's header names and values (431 above).",
    )
    max_header_count: int = Field(100, ge=8, le=10_000, description="Most headers in a request (431 above).")
    request_body_timeout_s: float = Field(
        30.0, gt=0, le=3600,
        description="Longest wait for the next part of a request body; a client that stops sending gets a 408.",
    )
    max_embedding_inputs: int = Field(
        2048, ge=1, le=2048, description="Most inputs in one /v1/embeddings request (400 above; OpenAI's limit, 2048, is the most).",
    )
    max_request_tokens: int = Field(
        65536, ge=1, le=10_000_000, description="Most tokens in one /v1/embeddings, /v1/rerank or /v1/classify "
        "request, all inputs (or query-document pairs) together, as the model's tokenizer counts them, cached ones "
        "included (400 naming the field above). It bounds how long one request holds a model (docs/operations.md).",
    )
    workers: int | None = Field(None, ge=1, le=64, description="Ingress replicas (HF_SERVER_WORKERS). Unset keeps the "
                                "deployment's own num_replicas from serve_config.yaml, or 1.")
    model_info_ttl_s: float = Field(
        5.0, gt=0, le=300, description="How often the ingress asks Serve and the models for their status "
        "(/ready and requests for an unknown model ask at once).",
    )
    model_calls_over_grpc: bool = Field(
        True, description="Call the models over the gRPC server Serve runs in every replica for calls between "
        "deployments, not as Ray actor tasks: less CPU per request (docs/performance.md).",
    )
    readiness_timeout_s: float = Field(2.0, gt=0, le=60, description="How long /ready waits for each model's answer.")
    # --- API keys ---
    enable_auth: bool = Field(True, description="Require an API key on /v1, /status and /admin (HF_SERVER_ENABLE_AUTH).")
    state_dir: Path | None = Field(
        None, description="API keys (SQLite) and admin.key (HF_SERVER_STATE_DIR, default ~/.hfserve)."
    )
    static_admin_key_sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 of a static admin key. Set from HF_SERVER_API_KEY by the builder; the key "
        "itself never travels in application args.",
    )
    public_metrics: bool = Field(False, description="Serve /metrics without an admin key.")
    key_cache_ttl_s: float = Field(
        1.0, gt=0, le=60, description="How long a replica trusts a key lookup; bounds revocation delay."
    )
    # --- rate limits (per key, sliding 60 s window; keys may override) ---
    default_rpm: int = Field(600, ge=1, le=10_000_000, description="Requests per minute for keys without their own.")
    default_tpm: int = Field(
        1_000_000, ge=1, le=10_000_000_000, description="Tokens per minute for keys without their own."
    )
    default_token_reservation: int = Field(
        256, ge=1, le=1_000_000,
        description="Completion tokens reserved at admission when a request sets no max_tokens.",
    )
    # --- response cache ---
    enable_caching: bool = Field(True, description="Cache deterministic responses (HF_SERVER_ENABLE_CACHING).")
    cache_ttl_s: float = Field(3600, gt=0, le=30 * 86400, description="Lifetime of a cached response.",
                               validation_alias=AliasChoices("cache_ttl_s", "cache_ttl_seconds"))
    cache_max_size: int = Field(1000, ge=1, le=10_000_000, description="Most cached entries (LRU).")
    cache_max_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Most cached bytes (LRU).")
    cache_scope: Literal["key", "global"] = Field(
        "key", description="'key': each API key sees only its own entries; 'global' shares them."
    )
    # --- circuit breakers ---
    enable_circuit_breaker: bool = Field(True, description="Per-model breakers (HF_SERVER_ENABLE_CIRCUIT_BREAKER).")
    circuit_breaker_threshold: int = Field(5, ge=1, le=1000, description="Consecutive failures that open it.")
    circuit_breaker_timeout_s: float = Field(60, gt=0, le=3600, description="How long it stays open.",
                                             validation_alias=AliasChoices("circuit_breaker_timeout_s", "circuit_breaker_timeout_seconds"))
    # --- metrics ---
    enable_metrics: bool = Field(True, description="Record the hf_server_* metrics /metrics serves (HF_SERVER_ENABLE_METRICS).")
    metrics_refresh_s: float = Field(
        10.0, ge=0.5, le=300, description="How often /metrics gathers the nodes' Ray metrics agents while it is "
        "scraped: set it to Ray's metrics_report_interval_ms (10 s by default), how often the agents change.",
    )
    metrics_key_label: bool = Field(
        False, description="Label hf_server_requests_total with the API key's id (never its secret): one series "
        "per key, so only for a bounded number of keys.",
    )

    # --- run-time models (POST /models/load) ---
    max_loaded_models: int | None = Field(
        None, ge=1, le=10_000, description="Most run-time models loaded at once; a load beyond it unloads the least "
        "recently used idle one (409 when all are busy). Config-file models are neither counted nor evicted.",
    )
    model_memory_budget_gb: float | None = Field(
        None, gt=0, le=1_000_000, description="Most weight memory (estimated from parameters x dtype before "
        "loading) that run-time models may hold together; a load beyond it unloads idle ones or gets a 409.",
    )
    model_load_timeout_s: float = Field(
        300, gt=0, le=86400, description="How long a run-time load (POST /models/load) may take, waiting for resources "
        "included, before it ends `failed` with the reason; and how long a request to a model scaled to zero waits "
        "for its replica to start (a cold start) before it gets a 504.",
    )

    # --- model aliases (more at run time: PUT /models/aliases/{alias}) ---
    aliases: dict[str, str] = Field(
        {}, max_length=1024, description="Names clients may use for a model: {alias: model id}. A target must be a "
        "model, not another alias; these cannot be re-pointed at run time (a redeploy changes them).",
    )

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, value: dict[str, str]) -> dict[str, str]:
        for alias, target in value.items():
            for name in (alias, target):
                if not valid_model_id(name):
                    raise ValueError(f"{name!r} is not a valid model id")
            if target in value:
                raise ValueError(f"alias {alias!r} points at {target!r}, which is an alias itself; point it at a model")
        return value

    # --- CORS (Starlette's CORSMiddleware; off while no origin is listed) ---
    cors_allow_origins: list[str] = Field(
        [], max_length=256, description="Origins whose browser applications may call the API, as scheme://host[:port], "
        "or '*' for any. Empty (the default): no CORS headers, and a browser refuses cross-origin calls.",
    )
    cors_allow_headers: list[str] = Field(
        ["authorization", "content-type", "x-api-key", "x-request-id"], max_length=64,
        description="Request headers a cross-origin request may send (a preflight asks for them).",
    )
    cors_max_age_s: int = Field(600, ge=0, le=86400, description="How long a browser may reuse a preflight's answer.")

    @field_validator("cors_allow_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(f"{origin!r} is not '*' or an origin, scheme://host[:port] without a path")
        return value

    @field_validator("cors_allow_headers")
    @classmethod
    def _header_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a header name")
        return value

    def with_env(self, env: EnvOverrides) -> IngressArgs:
        import hashlib

        updates: dict[str, Any] = {}
        for name in ("max_request_body_bytes", "workers", "enable_auth", "state_dir", "enable_caching", "enable_circuit_breaker",
                     "enable_metrics"):
            value = getattr(env, name)
            if value is not None:
                updates[name] = value
        if env.api_key is not None:
            updates["static_admin_key_sha256"] = hashlib.sha256(env.api_key.get_secret_value().encode()).hexdigest()
        return self.model_copy(update=updates)

    @property
    def effective_state_dir(self) -> Path:
        return Path(self.state_dir).expanduser() if self.state_dir else default_state_dir()
