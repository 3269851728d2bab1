"""A real two-node Ray cluster on this machine (`ray.cluster_utils.Cluster`: two raylets with
their own resources), deployed with the real `serve deploy` CLI through the dashboard, a
proxy on every node, an ingress and a model on the head and a model pinned to the worker.
Each node is started in Ray's HAProxy mode with what `hfserve haproxy-env` prints, as
docs/operations.md tells an operator to (HF_SERVER_HAPROXY=false: Ray's Python proxy)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import ROOT, free_port
from tests.tiny_models import build_tiny_bert, build_tiny_llama

REQUEST_TIMEOUT_S = 5.0
WORKER = {"num_cpus": 1, "resources": {"worker_node": 1}}


@dataclass
class TwoNodes:
    cluster: Any
    worker: Any
    head_url: str
    worker_url: str
    worker_port: int
    dashboard: str
    config: dict
    work: Path
    measured: dict[str, float] = field(default_factory=dict)
    cli_env: dict[str, str] = field(default_factory=dict)
    haproxy_env: dict[str, str] = field(default_factory=dict)  # each node's `hfserve haproxy-env`

    def admin_key(self) -> str:
        from serve_app.state.keys import read_admin_key_file

        key = read_admin_key_file(self.work / "state")
        assert key
        return key

    def add_worker(self, **resources):
        """A node like the worker: its proxy binds its own port (two proxies share this host)."""
        return self.cluster.add_node(
            num_cpus=WORKER["num_cpus"], resources={**WORKER["resources"], **resources},
            env_vars={"RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(self.worker_port), **self.haproxy_env, **own_haproxy_ports()},
        )

    def deploy(self, config: dict) -> None:
        path = self.work / f"serve_config-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        subprocess.run([str(Path(sys.executable).parent / "serve"), "deploy", str(path), "-a", self.dashboard],
                       cwd=ROOT, check=True, capture_output=True, timeout=120, env=self.cli_env)


def own_haproxy_ports() -> dict[str, str]:
    """Every node runs an HAProxy in HAProxy mode. Ray keeps its files apart per node, but its
    metrics and stats ports are fixed (9101, 8404): on one machine a second node's HAProxy could
    not bind them. Real nodes are separate hosts; here each node gets its own ports."""
    return {"RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()), "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port())}


def haproxy_mode_environment(work: Path) -> dict[str, str]:
    """What `eval "$(hfserve haproxy-env)"` sets before `ray start` on each node (docs/operations.md),
    unless HF_SERVER_HAPROXY=false: then Ray's Python proxy, as on a cluster started without it."""
    from contract.config import read_env
    from serve_app.cli import haproxy as haproxy_mode

    if read_env().haproxy is False:
        return {haproxy_mode.ENABLE_ENV: "0"}
    env = haproxy_mode.haproxy_environment(work / "haproxy", haproxy_mode.HeaderLimits.of([]), {}, move_taken_ports=False)
    assert env is not None, "no HAProxy binary (Ray bundles one for Linux): run with HF_SERVER_HAPROXY=false"
    return env


def wait_for(predicate, timeout_s: float, every_s: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"{what}: not within {timeout_s}s")


def cluster_config(models: dict[str, Path], work: Path, port: int) -> dict:
    common = {"cache_dir": str(work / "cache"), "hardware": "cpu", "num_cpus": 0.1,
              "request_timeout_s": REQUEST_TIMEOUT_S, "num_threads": 1}
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "127.0.0.1", "port": port},
        "logging_config": {"encoding": "JSON", "log_level": "INFO", "enable_access_log": False},
        "applications": [
            {"name": "ingress", "route_prefix": "/", "import_path": "serve_app.app:build_ingress_app",
             "args": {"state_dir": str(work / "state"), "model_info_ttl_s": 1.0,
                      "circuit_breaker_threshold": 2, "circuit_breaker_timeout_s": 60},
             # On the head: losing the worker must not take the HTTP face with it.
             "deployments": [{"name": "Ingress", "ray_actor_options": {"num_cpus": 0.05, "resources": {"head_node": 0.01}}}]},
            {"name": "chat", "route_prefix": None, "import_path": "serve_app.app:build_model_app",
             "args": {"source": str(models["llama"]), "task": "text-generation", "resources": {"worker_node": 0.01}, **common}},
            {"name": "embed", "route_prefix": None, "import_path": "serve_app.app:build_model_app",
             "args": {"source": str(models["bert"]), "task": "embedding", "resources": {"head_node": 0.01}, **common}},
        ],
    }


@pytest.fixture(scope="package")
def two_nodes(tmp_path_factory) -> TwoNodes:
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    work = tmp_path_factory.mktemp("cluster")
    # A long context, so that a stream can outlast a node's removal (test_multi_node): 480 tokens
    # of this model took about a second on a quiet machine and sometimes ended before the kill.
    models = {"llama": build_tiny_llama(work / "llama", max_position_embeddings=4096), "bert": build_tiny_bert(work / "bert")}
    head_port, worker_port, dashboard_port = free_port(), free_port(), free_port()
    # Ray's metrics agents export every 10 s by default; /metrics tests wait for them.
    os.environ.setdefault("RAY_metrics_report_interval_ms", "2000")
    haproxy_env = haproxy_mode_environment(work)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"head_node": 1}, "include_dashboard": True,
        "dashboard_host": "127.0.0.1", "dashboard_port": dashboard_port, "env_vars": {**haproxy_env, **own_haproxy_ports()},
    })
    nodes = TwoNodes(cluster, None, f"http://127.0.0.1:{head_port}", f"http://127.0.0.1:{worker_port}", worker_port,
                     f"http://127.0.0.1:{dashboard_port}", {}, work, haproxy_env=haproxy_env)
    nodes.worker = nodes.add_worker()
    ray.init(address=cluster.address, namespace="serve", log_to_driver=False)
    try:
        # Ray turns token authentication on for a process's clusters once any `ray.init` in it
        # did (as the integration tests' does): then the dashboard wants the token, and the
        # `serve deploy` CLI presents it with RAY_AUTH_MODE=token, as an operator's would.
        code = wait_for(lambda: _dashboard_status(nodes.dashboard), 120, 1.0, "the dashboard")
        nodes.cli_env = {**os.environ, **({"RAY_AUTH_MODE": "token"} if code == 401 else {})}
        nodes.config = cluster_config(models, work, head_port)
        started = time.monotonic()
        nodes.deploy(nodes.config)
        wait_for(lambda: _ready(nodes.head_url), 300, 0.5, "/ready after serve deploy")
        nodes.measured["deploy_ready_s"] = time.monotonic() - started
        yield nodes
    finally:
        print(f"[cluster] measured: {nodes.measured}", flush=True)
        node_ids = [node["NodeID"] for node in ray.nodes()] if ray.is_initialized() else []
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()
            from serve_app.cli import haproxy as haproxy_mode

            haproxy_mode.remove_node_files(node_ids)  # Ray leaves each node's HAProxy files in /tmp


def _dashboard_status(url: str) -> int | None:
    """200, or 401 when it wants Ray's token (the CLI presents it; this probe does not)."""
    try:
        code = httpx.get(f"{url}/api/version", timeout=2).status_code
    except httpx.HTTPError:
        return None
    return code if code in (200, 401) else None


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False
