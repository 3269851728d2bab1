"""One real Ray Serve deployment in Ray's Python proxy mode (HF_SERVER_HAPROXY=false), the
fallback on hosts without HAProxy (macOS): the smallest set of models, started with the launcher
code `hfserve serve` uses, through the integration tier's helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from contract.config import EnvOverrides
from serve_app.cli import haproxy
from serve_app.cli.deploy_plan import plan_deploy
from serve_app.cli.launcher import prepare_models, shutdown_cluster, start_cluster, wait_until_ready
from tests.conftest import free_port
from tests.integration.conftest import (
    LLAMA_CONTEXT,
    MAX_BODY,
    Server,
    _ingress_app,
    _model_app,
    serve_config,
)
from tests.tiny_models import build_tiny_bert, build_tiny_llama


def write_config(path: Path, models: dict[str, Path], cache_dir: Path, state_dir: Path) -> Path:
    common = {"cache_dir": str(cache_dir), "num_threads": 2}
    config = serve_config([
            # Header limits are the defaults (100 headers, 32 KiB): what an operator gets.
            _ingress_app("ingress", "/", {"max_request_body_bytes": MAX_BODY, "model_info_ttl_s": 1.0,
                                          "enable_auth": False, "enable_caching": False, "state_dir": str(state_dir)}),
            _model_app(
                "tiny-llama",
                {"source": str(models["llama"]), "task": "text-generation", "backend": "openvino",
                 "max_num_seqs": 8, "max_num_batched_tokens": 128, "inference_precision": "f32", **common},
                0.2,
                max_ongoing_requests=16,
            ),
            _model_app(
                "tiny-bert",
                {"source": str(models["bert"]), "task": "embedding", "backend": "openvino", **common},
                0.2,
            ),
    ])
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _proxy_actors() -> set[str]:
    """The class names of Serve's live proxy actors: ProxyActor (Python) or HAProxyManager."""
    from ray.util.state import list_actors

    return {actor.class_name for actor in list_actors(filters=[("state", "=", "ALIVE")])
            if actor.class_name in ("ProxyActor", "HAProxyManager")}


@pytest.fixture(scope="package")
def server(tmp_path_factory) -> Server:
    root = tmp_path_factory.mktemp("models")
    models = {"llama": build_tiny_llama(root / "tiny-llama", max_position_embeddings=LLAMA_CONTEXT),
              "bert": build_tiny_bert(root / "tiny-bert")}
    work = tmp_path_factory.mktemp("serve")
    config = write_config(work / "serve_config.yaml", models, work / "cache", work / "state")
    env = EnvOverrides(port=free_port(), dashboard_port=free_port(), haproxy=False)
    plan = plan_deploy(config, env)
    prepare_models(plan.models, say=lambda message: print(message, flush=True))
    try:
        start_cluster(plan, env)
        wait_until_ready(plan, timeout_s=600, say=lambda message: print(message, flush=True))
        # The mode under test, not HAProxy's: a tier that silently ran through HAProxy would prove nothing.
        assert (actors := _proxy_actors()) == {"ProxyActor"}, f"{haproxy.ENABLE_ENV}=0 yet Serve runs {actors}"
        yield Server(plan.base_url, plan, models, work / "state")
    finally:
        shutdown_cluster()
