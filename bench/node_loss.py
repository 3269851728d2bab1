"""Node loss, measured: a two-node Ray cluster on this machine (`ray.cluster_utils.Cluster`),
the gateway ingress and a chat model on the head, an embedding model pinned to the worker by a
custom resource. The worker node is killed, and later a new one joins. Prints, second by
second, what embedding and chat clients saw, and when Serve had a healthy replacement.

    .venv/bin/python -m bench.node_loss

Used for the node-loss row of the fault matrix in docs/operations.md.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import httpx
import ray
from ray import serve
from ray.cluster_utils import Cluster

from contract.config import ModelAppArgs
from contract.ingress_args import IngressArgs
from deployments.server import model_server_deployment
from serve_app.app import build_ingress_app
from serve_app.state.keys import read_admin_key_file

from .server import free_port


def main() -> int:
    from tests.tiny_models import build_tiny_bert, build_tiny_llama

    work = Path(tempfile.mkdtemp(prefix="hfserve-node-loss-"))
    bert, llama = build_tiny_bert(work / "bert"), build_tiny_llama(work / "llama")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"head_node": 1}})
    worker = cluster.add_node(num_cpus=1, resources={"worker_node": 1})
    ray.init(address=cluster.address)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    ingress = IngressArgs(state_dir=work / "state", model_info_ttl_s=1.0)
    common = {"cache_dir": str(work / "cache"), "backend": "transformers"}
    serve.run(build_ingress_app(ingress), name="ingress", route_prefix="/", blocking=False)
    serve.run(model_server_deployment().options(ray_actor_options={"num_cpus": 0.1, "resources": {"head_node": 0.01}})
              .bind(ModelAppArgs(source=str(llama), task="text-generation", request_timeout_s=10, **common)),
              name="chat", route_prefix=None, blocking=False)
    serve.run(model_server_deployment().options(ray_actor_options={"num_cpus": 0.1, "resources": {"worker_node": 0.01}})
              .bind(ModelAppArgs(source=str(bert), task="embedding", request_timeout_s=10, **common)),
              name="embed", route_prefix=None, blocking=False)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/ready", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(1)
    auth = {"Authorization": f"Bearer {read_admin_key_file(work / 'state')}", "Cache-Control": "no-cache"}
    log: list[tuple[float, str, int, str, float]] = []
    stop = threading.Event()
    started = time.monotonic()

    def client(kind: str, path: str, body: dict) -> None:
        with httpx.Client(base_url=base, timeout=60, headers=auth) as http:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    response = http.post(path, json=body)
                    code = response.json().get("error", {}).get("code") or "" if response.status_code != 200 else ""
                    log.append((sent - started, kind, response.status_code, code, time.monotonic() - sent))
                except httpx.HTTPError as exc:
                    log.append((sent - started, kind, 0, type(exc).__name__, time.monotonic() - sent))
                time.sleep(0.2)

    threads = [
        threading.Thread(target=client, args=("embed", "/v1/embeddings", {"model": "embed", "input": "x"})),
        threading.Thread(target=client, args=("chat", "/v1/chat/completions",
                                              {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})),
    ]
    for thread in threads:
        thread.start()
    time.sleep(5)
    killed = time.monotonic() - started
    cluster.remove_node(worker, allow_graceful=False)
    print(f"[node-loss] worker node killed at t={killed:.1f}s", flush=True)
    time.sleep(40)
    joined = time.monotonic() - started
    cluster.add_node(num_cpus=1, resources={"worker_node": 1})
    print(f"[node-loss] a new worker node joined at t={joined:.1f}s", flush=True)
    healthy = None
    while time.monotonic() - started < joined + 120:
        app = serve.status().applications.get("embed")
        if app is not None and str(getattr(app.status, "value", app.status)) == "RUNNING" and healthy is None:
            healthy = time.monotonic() - started
        if healthy is not None and any(kind == "embed" and status == 200 and t > healthy for t, kind, status, _, _ in log):
            break
        time.sleep(0.2)
    time.sleep(2)
    stop.set()
    for thread in threads:
        thread.join()
    print(f"[node-loss] Serve reported the embedding model RUNNING again at t={healthy}", flush=True)
    print("| t (s) | kind | status | code | latency (s) |\n|---|---|---|---|---|")
    for t, kind, status, code, latency in log:
        if t > killed - 2:
            print(f"| {t:.1f} | {kind} | {status} | {code} | {latency:.2f} |")
    first_after_kill = next(((t, latency) for t, kind, _, _, latency in log if kind == "embed" and t >= killed), None)
    first_success = next((t for t, kind, status, _, _ in log if kind == "embed" and status == 200 and t > joined), None)
    chat_failures = sum(1 for t, kind, status, _, _ in log if kind == "chat" and t >= killed and status != 200)
    print(f"\n[node-loss] first embedding request after the kill answered after {first_after_kill[1]:.1f}s"
          if first_after_kill else "")
    print(f"[node-loss] chat requests failed meanwhile: {chat_failures}")
    if healthy is not None and first_success is not None:
        print(f"[node-loss] first embedding success {first_success - healthy:.1f}s after Serve reported it RUNNING")
    serve.shutdown()
    ray.shutdown()
    cluster.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
