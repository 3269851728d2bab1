"""One real Ray Serve deployment for the whole integration package, built with the same
launcher code `hfserve serve` uses, over tiny random models built at test time."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from contract.config import EnvOverrides, read_env
from serve_app.cli.deploy_plan import DeployPlan, plan_deploy
from serve_app.cli.launcher import (
    bootstrap_admin_key,
    prepare_models,
    shutdown_cluster,
    start_cluster,
    wait_until_ready,
)
from tests.conftest import free_port
from tests.tiny_models import WIDE, build_tiny_bert, build_tiny_bert_classifier, build_tiny_llama

LLAMA_CONTEXT = 512
MAX_BODY = 65536
RERANK_MAX_DOCUMENTS = 8
CLASSIFIER_LABELS = ("negative", "neutral", "positive")
WIDE_LABELS = tuple(f"label-{i:02d}" for i in range(64))  # 2048 inputs' scores: ~8 MB, over gRPC's 4 MiB
WIDE_MODELS = tuple(f"wide-{kind}{engine}" for kind in ("bert", "classifier", "reranker") for engine in ("", "-torch"))
# Every model application of the config below, as /v1/models lists them.
MODELS = ("tiny-bert", "tiny-bert-fragile", "tiny-bert-torch", "tiny-classifier", "tiny-llama", "tiny-llama-hf",
          "tiny-reranker", *WIDE_MODELS)
GATEWAY_PREFIX = "/gw"
KEEP_ALIVE_S = 3
METRICS_INTERVAL_ENV, METRICS_INTERVAL_MS = "RAY_metrics_report_interval_ms", 2000
CORS_ORIGIN = "https://app.example"
OLD_NAME_CACHE_TTL_S = 1800  # given under a deprecated name (write_config); not the default, 3600


@dataclass(frozen=True)
class Server:
    base_url: str
    plan: DeployPlan
    models: dict[str, Path]
    state_dir: Path

    @property
    def gateway_url(self) -> str:
        return self.base_url + GATEWAY_PREFIX

    def admin_key(self) -> str:
        from serve_app.state.keys import read_admin_key_file

        key = read_admin_key_file(self.state_dir)
        assert key
        return key

    def openai(self, **kwargs):
        from openai import OpenAI

        return OpenAI(base_url=f"{self.base_url}/v1", api_key="not-needed", max_retries=0, **kwargs)

    def async_openai(self, **kwargs):
        from openai import AsyncOpenAI

        return AsyncOpenAI(base_url=f"{self.base_url}/v1", api_key="not-needed", max_retries=0, **kwargs)

    def http(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=60, **kwargs)


def _model_app(name: str, args: dict, num_cpus: float, **deployment) -> dict:
    return {
        "name": name,
        "route_prefix": None,
        "import_path": "serve_app.app:build_model_app",
        "args": {**args, "num_cpus": num_cpus},
        "deployments": [{"name": "ModelServer", **deployment}],
    }



def _ingress_app(name: str, route_prefix: str, args: dict) -> dict:
    return {
        "name": name,
        "route_prefix": route_prefix,
        "import_path": "serve_app.app:build_ingress_app",
        "args": args,
        "deployments": [{"name": "Ingress", "ray_actor_options": {"num_cpus": 0.05}}],
    }


def serve_config(applications: list[dict]) -> dict:
    """What every test server's config shares around its applications: one proxy on the head, the
    short keep-alive the limit tests wait out, JSON logs without Serve's access log."""
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": 8000, "keep_alive_timeout_s": KEEP_ALIVE_S},
        "logging_config": {"encoding": "JSON", "log_level": "INFO", "enable_access_log": False},
        "applications": applications,
    }

def write_config(path: Path, models: dict[str, Path], cache_dir: Path, state_dir: Path) -> Path:
    common = {"cache_dir": str(cache_dir), "num_threads": 2}
    # Both ingress applications share the one state actor, so they share its settings.
    # A long breaker timeout: recovery must come from Serve's healthy replacement (the breaker
    # goes half-open at once), not from the timeout running out. `cache_ttl_seconds` is the old
    # name of cache_ttl_s, on purpose: a config of the last release still deploys (test_status_report.py).
    shared_state = {"state_dir": str(state_dir), "circuit_breaker_threshold": 2, "circuit_breaker_timeout_s": 60,
                    "cache_ttl_seconds": OLD_NAME_CACHE_TTL_S}
    config = serve_config([
            # The serving-core tests: no keys, no cache (they measure the engines).
            _ingress_app("ingress", "/", {"max_request_body_bytes": MAX_BODY, "model_info_ttl_s": 1.0,
                                          "enable_auth": False, "enable_caching": False, **shared_state}),
            # The gateway tests: keys on, two replicas sharing limits, cache and breakers.
            # Requests labelled with key ids: test_metrics.py counts its own key's exactly.
            # Run-time loads (test_lifecycle.py): one at a time, weights within 50 MB. CORS for one origin.
            _ingress_app("gateway", GATEWAY_PREFIX, {"model_info_ttl_s": 1.0, "workers": 2, "metrics_key_label": True,
                                                     "cors_allow_origins": [CORS_ORIGIN],
                                                     "metrics_refresh_s": METRICS_INTERVAL_MS / 1000,
                                                     "max_loaded_models": 1, "model_memory_budget_gb": 0.05,
                                                     **shared_state}),
            _model_app(
                "tiny-llama",
                {"source": str(models["llama"]), "task": "text-generation", "backend": "openvino",
                 "max_num_seqs": 16, "max_num_batched_tokens": 128, "inference_precision": "f32", **common},
                0.2,
                max_ongoing_requests=64,
            ),
            _model_app(
                "tiny-llama-hf",
                {"source": str(models["llama"]), "task": "text-generation", "backend": "transformers",
                 "max_num_seqs": 8, "max_num_batched_tokens": 64, **common,
                 # test_tool_calling.py: the parsers, on output a structured output makes
                 "tool_parser": "hermes", "reasoning_parser": "qwen3"},
                0.2,
                max_ongoing_requests=2,
                max_queued_requests=2,  # backpressure: the rest get a fast 503
            ),
            _model_app(
                "tiny-bert",
                {"source": str(models["bert"]), "task": "embedding", "backend": "openvino",
                 "supports_dimensions": True, "max_batch_size": 16, "batch_wait_timeout_s": 0.02, **common},
                0.2,
                max_ongoing_requests=64,
            ),
            _model_app(
                "tiny-bert-torch",
                # no task: a bare BertModel is inferred as embedding (test_task_inference.py)
                {"source": str(models["bert_plain"]), "backend": "transformers", **common},
                0.2,
            ),
            _model_app(  # test_rerank_classify.py: a cross-encoder, one output
                "tiny-reranker",
                {"source": str(models["reranker"]), "task": "rerank", "backend": "openvino",
                 "max_rerank_documents": RERANK_MAX_DOCUMENTS, **common},
                0.1,
            ),
            _model_app(  # test_rerank_classify.py: three labels
                "tiny-classifier",
                {"source": str(models["classifier"]), "task": "text-classification", "backend": "openvino", **common},
                0.1,
            ),
            _model_app(  # the one the breaker test kills
                "tiny-bert-fragile",
                {"source": str(models["bert"]), "task": "embedding", "backend": "openvino", "request_timeout_s": 2, **common},
                0.1,
            ),
            # test_hostile_maxima.py: answers at the documented maxima, on each engine.
            *(_model_app(f"wide-{kind}{suffix}",
                         {"source": str(models[f"wide_{kind}"]), "task": task, "backend": backend, **common}, 0.05)
              for kind, task in (("bert", "embedding"), ("classifier", "text-classification"), ("reranker", "rerank"))
              for suffix, backend in (("", "openvino"), ("-torch", "transformers"))),
    ])
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="package")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "llama": build_tiny_llama(root / "tiny-llama", max_position_embeddings=LLAMA_CONTEXT),
        "bert": build_tiny_bert(root / "tiny-bert"),
        "bert_plain": build_tiny_bert(root / "tiny-bert-plain", sentence_transformers_layout=False, seed=1),
        "reranker": build_tiny_bert_classifier(root / "tiny-reranker"),
        "classifier": build_tiny_bert_classifier(root / "tiny-classifier", labels=list(CLASSIFIER_LABELS), seed=1),
        "wide_bert": build_tiny_bert(root / "wide-bert", **WIDE),
        "wide_classifier": build_tiny_bert_classifier(root / "wide-classifier", labels=list(WIDE_LABELS), **WIDE),
        "wide_reranker": build_tiny_bert_classifier(root / "wide-reranker", **WIDE),
    }


@pytest.fixture(scope="package")
def server(tiny_models, tmp_path_factory) -> Server:
    work = tmp_path_factory.mktemp("serve")
    state_dir = work / "state"
    config = write_config(work / "serve_config.yaml", tiny_models, work / "cache", state_dir)
    # Ray's HAProxy mode, the default; HF_SERVER_HAPROXY=false runs the package through Ray's Python
    # proxy (tests/python_proxy runs a few of these tests that way on every run).
    env = EnvOverrides(port=free_port(), dashboard_port=free_port(), haproxy=read_env().haproxy)
    plan = plan_deploy(config, env)
    prepare_models(plan.models, say=lambda message: print(message, flush=True))
    bootstrap_admin_key(plan, say=lambda message: print(message, flush=True))
    # Ray's metrics agents export every 10 s by default; the metric tests wait for them.
    os.environ.setdefault(METRICS_INTERVAL_ENV, str(METRICS_INTERVAL_MS))
    try:
        start_cluster(plan, env)
        wait_until_ready(plan, timeout_s=600, say=lambda message: print(message, flush=True))
        yield Server(plan.base_url, plan, tiny_models, state_dir)
    finally:
        shutdown_cluster()
