"""The GPU check behind bench/gpu_check.sh: on a machine with an NVIDIA GPU, hfserve must
- detect the GPU (`hfserve hardware`, the per-node hardware actor),
- place two `hardware: auto` models on it with no num_gpus set (each replica reserves the share of
  the GPU its estimated memory needs, hardware/placement.py) and run transformers on CUDA,
- answer chat and embeddings correctly (token counts; vectors as the CPU computes them).

    python -m bench.gpu_check            # expects cuda
    python -m bench.gpu_check --expect openvino   # the same checks on a CPU machine (tests the script)

Prints one line per check and exits non-zero on the first failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import yaml


def check(ok: bool, what: str, detail: object = "") -> None:
    print(f"[{'PASS' if ok else 'FAIL'}] {what}{': ' + str(detail) if detail != '' else ''}", flush=True)
    if not ok:
        raise SystemExit(1)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--expect", default="cuda", help="the platform `hardware: auto` must pick")
    expect = parser.parse_args().expect

    from contract.config import EnvOverrides
    from hardware.detect import detect
    from serve_app.cli.deploy_plan import plan_deploy
    from serve_app.cli.launcher import shutdown_cluster, start_cluster, wait_until_ready
    from tests.conftest import free_port
    from tests.tiny_models import build_tiny_bert, build_tiny_llama

    report = detect()
    cuda = report.platforms["cuda"]
    print(json.dumps({name: {"available": p.available, "reason": p.reason, "devices": [d.name for d in p.devices]}
                      for name, p in report.platforms.items()}, indent=1))
    if expect == "cuda":
        check(cuda.available and bool(cuda.devices), "CUDA detected", [d.model_dump() for d in cuda.devices])
    work = Path(tempfile.mkdtemp(prefix="hfserve-gpu-check-"))
    llama, bert = build_tiny_llama(work / "llama"), build_tiny_bert(work / "bert")
    common = {"hardware": "auto", "cache_dir": str(work / "cache"), "num_cpus": 0.5}
    config = {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": free_port()},
        "applications": [
            {"name": "ingress", "route_prefix": "/", "import_path": "serve_app.app:build_ingress_app",
             "args": {"enable_auth": False, "enable_caching": False, "state_dir": str(work / "state")}},
            {"name": "chat", "route_prefix": None, "import_path": "serve_app.app:build_model_app",
             "args": {"source": str(llama), "task": "text-generation", **common}},
            {"name": "embed", "route_prefix": None, "import_path": "serve_app.app:build_model_app",
             "args": {"source": str(bert), "task": "embedding", **common}},
        ],
    }
    path = work / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    plan = plan_deploy(path, EnvOverrides(dashboard_port=free_port()))
    started = time.monotonic()
    try:
        start_cluster(plan, EnvOverrides(dashboard_port=free_port()))
        wait_until_ready(plan, timeout_s=600, say=print)
        check(True, "deployed and ready", f"{time.monotonic() - started:.1f}s")
        from ray.util.state import list_actors

        with httpx.Client(base_url=plan.base_url, timeout=120) as http:
            cards = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
            for name in ("chat", "embed"):
                card = cards[name]
                check(card["platform"] == expect, f"{name}: hardware auto picked {expect}", card)
                replica = next(a for a in list_actors(filters=[("state", "=", "ALIVE")], detail=True)
                               if a.class_name == f"ServeReplica:{name}:ModelServer")
                gpus = replica.required_resources.get("GPU", 0)
                sized = 0 < gpus < 1 if expect == "cuda" else gpus == 0  # a tiny model: a small share
                check(sized, f"{name}: the replica reserved {gpus} GPU", replica.required_resources)
                if expect == "cuda":
                    check(card["device"] == "cuda" and card["backend"] == "transformers", f"{name}: transformers on CUDA")
            chat = http.post("/v1/chat/completions", json={"model": "chat", "messages": [{"role": "user", "content": "hi"}],
                                                          "max_tokens": 8, "temperature": 0})
            check(chat.status_code == 200 and chat.json()["usage"]["completion_tokens"] == 8, "chat answers", chat.text[:200])
            texts = ["the GPU computes this", "and this one too"]
            embed = http.post("/v1/embeddings", json={"model": "embed", "input": texts})
            check(embed.status_code == 200 and len(embed.json()["data"]) == 2, "embeddings answer", embed.text[:200])
            served = np.array([d["embedding"] for d in embed.json()["data"]], dtype=np.float32)
            deadline = time.monotonic() + 30  # replicas report themselves on start and every 5 s
            while True:
                status = http.get("/status").json()
                gpus = {m["id"]: [r["platform"] for r in m["replicas"]] for m in status["models"]}
                # Serve lists a replica before it reports itself (platform null until then).
                if all(p and all(p) for p in gpus.values()) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            check(all(p == [expect] for name, p in gpus.items() if name in ("chat", "embed")), "every replica's platform", gpus)
        if expect == "cuda":
            _check_memory_rereads(cuda)
        reference = _cpu_reference(bert, texts)
        cosine = (served * reference).sum(axis=1) / (np.linalg.norm(served, axis=1) * np.linalg.norm(reference, axis=1))
        check(bool((cosine > 0.999).all()), "embeddings match the CPU's", cosine.round(5).tolist())
    finally:
        shutdown_cluster()
    print("[DONE] every check passed", flush=True)
    return 0


def _check_memory_rereads(detected) -> None:
    """The node actor detects once and then re-reads free memory alone: the GPU's through NVML,
    found by the UUID the probe recorded. The replicas' CUDA contexts, made after the detection,
    must show in the figure."""
    import ray

    from hardware.probe import node_actor

    actor = node_actor(ray.get_runtime_context().get_node_id())
    check(actor is not None, "this node has its hardware actor")
    first = ray.get(actor.report.remote())
    again = ray.get(actor.report.remote(max_age_s=0))
    check(again["detected_at"] == first["detected_at"], "the node actor did not detect again")
    device, probed = again["platforms"]["cuda"]["devices"][0], detected.devices[0]
    check(bool(device["properties"].get("uuid")), "the probe recorded the GPU's UUID", device["properties"])
    check(device["free_memory_bytes"] is not None and device["free_memory_bytes"] < probed.free_memory_bytes,
          "free GPU memory re-read through NVML (below the detection's, with the replicas loaded)",
          f"{probed.free_memory_bytes} -> {device['free_memory_bytes']}")


def _cpu_reference(model_dir: Path, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir), device="cpu").encode(texts, normalize_embeddings=True)


if __name__ == "__main__":
    sys.exit(main())
