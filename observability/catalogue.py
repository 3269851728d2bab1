"""Every metric hfserve exports: name, help, labels, buckets, and how /metrics folds the series
of many replicas into one (`combine`; recording: recorder.py, gathering: exposition.py).

The names are a public contract: deploy/grafana/hfserve.json, deploy/prometheus/alerts.yml and
the docs follow them (tests/unit/test_deploy_assets.py). Label values are bounded: known model ids
(never what a client sent), route templates, status codes, error types, fixed enums; a key id
(never its secret) only when an operator opts in with `metrics_key_label`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["counter", "gauge", "histogram"]

# Ray's metrics agents export every ray.util.metrics metric under this prefix.
RAY_PREFIX = "ray_"

# Seconds: request latencies from a cached reply (ms) to a long generation (minutes).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Seconds: time to first token and queueing (vLLM's TTFT buckets, trimmed).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0)
# Seconds between tokens of one sequence (vLLM's inter-token buckets).
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
# Seconds to load a model: from cached files (seconds) to a first conversion (minutes).
LOAD_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0)
# Sequences or inputs in one engine step or one @serve.batch call.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclass(frozen=True)
class MetricSpec:
    name: str  # as /metrics serves it (Ray's agents add RAY_PREFIX)
    kind: Kind
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()
    # How /metrics folds the same series of many replicas: "sum" (counts, in-flight numbers),
    # or "max" (a state or a ratio, where a sum would mean nothing).
    combine: Literal["sum", "max"] = "sum"
    recorded_by: Literal["ingress", "model", "state", "node"] = "ingress"

    @property
    def ray_name(self) -> str:
        return RAY_PREFIX + self.name


def _m(name: str, kind: Kind, help: str, labels: tuple[str, ...], **extra) -> MetricSpec:  # noqa: A002
    return MetricSpec(name, kind, help, labels, **extra)


# The key id label: present on every request series, empty unless the operator opts in.
KEY_LABEL = "key_id"

# ---- the seed's names
REQUESTS = _m("hf_server_requests_total", "counter", "HTTP requests answered, by model, endpoint and status code.",
              ("model", "endpoint", "status", KEY_LABEL))
REQUEST_DURATION = _m("hf_server_request_duration_seconds", "histogram",
                      "Time from a request's arrival at the ingress to its last byte.", ("model", "endpoint"),
                      buckets=LATENCY_BUCKETS)
MODELS_LOADED = _m("hf_server_models_loaded", "gauge", "Model replicas loaded and serving, per model.", ("model",),
                   recorded_by="model")
MODEL_LOAD_DURATION = _m("hf_server_model_load_duration_seconds", "histogram",
                         "Time a model replica took to prepare its files and load its engine.", ("model",),
                         buckets=LOAD_BUCKETS, recorded_by="model")
CACHE_HITS = _m("hf_server_cache_hits_total", "counter",
                "Cache lookups answered from the cache (kind: response; embedding or classification per input; "
                "rerank per document).", ("model", "kind"))
CACHE_MISSES = _m("hf_server_cache_misses_total", "counter",
                  "Cache lookups the cache could not answer (kind: response; embedding or classification per input; "
                  "rerank per document).", ("model", "kind"))
ERRORS = _m("hf_server_errors_total", "counter", "Requests answered with an error, by OpenAI error type.",
            ("model", "endpoint", "type"))
HARDWARE_UTILIZATION = _m("hf_server_hardware_utilization", "gauge",
                          "Busy fraction (0-1) of each node's devices: compute and memory.", ("node", "device", "resource"),
                          combine="max", recorded_by="node")

# ---- serving (recorded by the model replicas)
TIME_TO_FIRST_TOKEN = _m("hf_server_time_to_first_token_seconds", "histogram",
                         "Time from a generation request's arrival at its replica to its first token.", ("model",),
                         buckets=TTFT_BUCKETS, recorded_by="model")
INTER_TOKEN_LATENCY = _m("hf_server_inter_token_latency_seconds", "histogram",
                         "Time between consecutive tokens of a sequence.", ("model",),
                         buckets=ITL_BUCKETS, recorded_by="model")
REQUEST_QUEUE = _m("hf_server_request_queue_seconds", "histogram",
                   "Time a model call waited for a replica to start it (Serve's queue), seen from the ingress.",
                   ("model",), buckets=TTFT_BUCKETS)
PROMPT_TOKENS = _m("hf_server_prompt_tokens_total", "counter", "Prompt (input) tokens processed.", ("model",),
                   recorded_by="model")
GENERATION_TOKENS = _m("hf_server_generation_tokens_total", "counter", "Tokens generated.", ("model",),
                       recorded_by="model")
ACTIVE_REQUESTS = _m("hf_server_active_requests", "gauge", "Requests a model's replicas are working on now.",
                     ("model",), recorded_by="model")
BATCH_SIZE = _m("hf_server_batch_size", "histogram",
                "Sequences in one engine step (kind engine_step) or inputs in one batch of requests (kind serve_batch).",
                ("model", "kind"), buckets=BATCH_BUCKETS, recorded_by="model")
ENGINE_RUNNING = _m("hf_server_engine_running_sequences", "gauge", "Sequences the engines are generating now.",
                    ("model",), recorded_by="model")
ENGINE_WAITING = _m("hf_server_engine_waiting_sequences", "gauge", "Sequences waiting for room in the engines.",
                    ("model",), recorded_by="model")
KV_CACHE_USAGE = _m("hf_server_kv_cache_usage_ratio", "gauge",
                    "Fraction of the KV cache in use (0-1); the fullest replica's.", ("model",),
                    combine="max", recorded_by="model")

# ---- gateway
RATE_LIMITED = _m("hf_server_rate_limited_total", "counter", "Requests refused with 429, by the limit hit.",
                  ("model", "limit"))
BREAKER_STATE = _m("hf_server_circuit_breaker_state", "gauge", "Circuit breaker per model: 0 closed, 1 half-open, 2 open.",
                   ("model",), combine="max", recorded_by="state")
CACHE_ENTRIES = _m("hf_server_cache_entries", "gauge", "Entries in the shared response cache.", (), recorded_by="state")
CACHE_BYTES = _m("hf_server_cache_bytes", "gauge", "Bytes held by the shared response cache.", (), recorded_by="state")
AUTH_FAILURES = _m("hf_server_auth_failures_total", "counter",
                   "Requests refused by authentication or authorization, by reason.", ("reason",))
FALLBACKS = _m("hf_server_fallbacks_total", "counter",
               "Requests another model served because the one asked for could not (its `fallbacks`), by the model "
               "asked for, the one that served and why.", ("model", "fallback", "reason"))
# A restart of the state actor loses the cache, breakers and rate-limit windows. Ray's own
# ray_actors gauge counts actors by class and state, too coarse to see one quick restart, so
# the actor records when it started and an alert watches that value change.
STATE_STARTED = _m("hf_server_state_started_timestamp_seconds", "gauge",
                   "Unix time the state actor (hfserve_state) last started.", (), combine="max",
                   recorded_by="state")

CATALOGUE: tuple[MetricSpec, ...] = (
    REQUESTS, REQUEST_DURATION, MODELS_LOADED, MODEL_LOAD_DURATION, CACHE_HITS, CACHE_MISSES, ERRORS,
    HARDWARE_UTILIZATION, TIME_TO_FIRST_TOKEN, INTER_TOKEN_LATENCY, REQUEST_QUEUE, PROMPT_TOKENS,
    GENERATION_TOKENS, ACTIVE_REQUESTS, BATCH_SIZE, ENGINE_RUNNING, ENGINE_WAITING, KV_CACHE_USAGE,
    RATE_LIMITED, BREAKER_STATE, CACHE_ENTRIES, CACHE_BYTES, AUTH_FAILURES, STATE_STARTED, FALLBACKS,
)
BY_NAME = {spec.name: spec for spec in CATALOGUE}
BY_RAY_NAME = {spec.ray_name: spec for spec in CATALOGUE}

# Fixed label values (enums): the recorder refuses anything else, so no client text leaks in.
CACHE_KINDS = ("response", "embedding", "rerank", "classification")
LIMIT_KINDS = ("requests", "tokens", "concurrency")
AUTH_REASONS = ("missing_key", "invalid_key", "forbidden")
# Why a fallback served (serve_app/ingress/gateway/fallbacks.py).
FALLBACK_REASONS = ("circuit_open", "overloaded", "unavailable", "cold_start", "context_length")
BATCH_KINDS = ("engine_step", "serve_batch")
BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}


def sample_names() -> set[str]:
    """Every sample name /metrics can serve (a histogram's _bucket, _sum and _count), for the
    checks that dashboards and alerts query only what exists."""
    names: set[str] = set()
    for spec in CATALOGUE:
        if spec.kind == "histogram":
            names.update(f"{spec.name}_{suffix}" for suffix in ("bucket", "sum", "count"))
        else:
            names.add(spec.name)
    return names
