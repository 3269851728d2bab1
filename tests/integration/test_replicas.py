"""Several replicas of one model: the response cache keeps hitting whichever replica the
ingress asks, /status and /v1/models list every replica with its node, and autoscaling goes
up under load and back down when idle without failing a request."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from ray import serve

from contract.config import ModelAppArgs
from deployments.server import model_server_deployment

from .test_gateway import create_key


def _deploy(name: str, args: ModelAppArgs, **options) -> None:
    deployment = model_server_deployment().options(ray_actor_options={"num_cpus": 0.05}, **options)
    serve.run(deployment.bind(args), name=name, route_prefix=None, blocking=False)


def _wait_ready(base_url: str, headers: dict, name: str, replicas: int, warm_up: dict, timeout_s: float = 180) -> dict:
    """Until /v1/models shows the replicas and 4 requests in a row succeed (every ingress
    replica has found the new model)."""
    deadline = time.monotonic() + timeout_s
    path = "/v1/embeddings" if "input" in warm_up else "/v1/chat/completions"
    streak = 0
    with httpx.Client(base_url=base_url, timeout=60, headers=headers) as http:
        while time.monotonic() < deadline:
            card = {m["id"]: m for m in http.get("/v1/models").json()["data"]}.get(name)
            if card and card["status"] == "ready" and len(card["replicas"]) == replicas:
                streak = streak + 1 if http.post(path, json=warm_up).status_code == 200 else 0
                if streak == 4:
                    return card
            time.sleep(0.25)
    raise AssertionError(f"{name} did not show {replicas} ready replicas")


@pytest.fixture
def two_replicas(server):
    name = "tiny-bert-pair"
    _deploy(name, ModelAppArgs(source=str(server.models["bert_plain"]), task="embedding", backend="transformers",
                               cache_dir=server.plan.models["tiny-bert"].cache_dir), num_replicas=2)
    yield name
    serve.delete(name)


def test_two_replicas_share_the_cache_and_both_are_listed(server, two_replicas):
    admin = {"Authorization": f"Bearer {server.admin_key()}", "Cache-Control": "no-cache"}
    card = _wait_ready(server.gateway_url, admin, two_replicas, 2, {"model": two_replicas, "input": "warm up"})
    assert len({r["id"] for r in card["replicas"]}) == 2
    assert all(r["platform"] == "cpu" and r["device"] == "cpu" and r["node_id"] for r in card["replicas"])
    key, _ = create_key(server, name="pair")
    body = {"model": two_replicas, "input": ["the same sentence", "and another"]}
    with httpx.Client(base_url=server.gateway_url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as http:
        assert http.post("/v1/embeddings", json=body).headers["x-cache"] == "MISS"
        results = []
        # Long enough for the model directory (refreshed every second) to hear from both
        # replicas many times: a revision that differed between them would empty the cache.
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            results.append(http.post("/v1/embeddings", json=body).headers["x-cache"])
            time.sleep(0.25)
    # The replica that stored the entry hits at once from its own copy; the other one once the
    # store has reached the state actor and its sync has brought the key back (a few 250 ms
    # periods). After that, every request hits: no MISS later (a revision that differed
    # between the model's replicas would empty the cache again).
    last_miss = max((i for i, result in enumerate(results) if result == "MISS"), default=-1)
    assert last_miss < 8 and len(results) - last_miss > 16, results
    with httpx.Client(base_url=server.gateway_url, timeout=30, headers={"Authorization": f"Bearer {server.admin_key()}"}) as http:
        status = {m["id"]: m for m in http.get("/status").json()["models"]}[two_replicas]
    assert len(status["replicas"]) == 2 and status["revision"]
    assert {r["replica_id"] for r in status["replicas"]} == {r["id"] for r in card["replicas"]}
    assert all(r["pid"] > 0 and r["engine"] is not None for r in status["replicas"])


@pytest.fixture
def autoscaled(server):
    name = "tiny-llama-auto"
    _deploy(name, ModelAppArgs(source=str(server.models["llama"]), task="text-generation", backend="transformers",
                               cache_dir=server.plan.models["tiny-bert"].cache_dir, max_batch_size=4),
            max_ongoing_requests=8,
            autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
                                "upscale_delay_s": 0.5, "downscale_delay_s": 3, "metrics_interval_s": 0.5,
                                "look_back_period_s": 2})
    yield name
    serve.delete(name)


def _replicas(name: str) -> int:
    states = serve.status().applications[name].deployments["ModelServer"].replica_states
    return sum(count for state, count in states.items() if str(getattr(state, "value", state)) == "RUNNING")


def test_autoscaling_goes_up_under_load_and_down_when_idle_without_failures(server, autoscaled):
    _wait_ready(server.base_url, {}, autoscaled, 1, {"model": autoscaled, "messages": [{"role": "user", "content": "hi"}],
                                                    "max_tokens": 2})
    codes: list[int] = []
    counts: list[int] = []
    # Each request takes a while (64 tokens), so 8 clients keep about 8 requests ongoing.
    body = {"model": autoscaled, "messages": [{"role": "user", "content": "count"}], "max_tokens": 64}
    one = {"model": autoscaled, "messages": [{"role": "user", "content": "one"}], "max_tokens": 2}

    async def load_until_two_replicas(limit_s: float) -> None:
        # A new replica takes a while to start on a busy 2-core machine: load until it runs.
        done = asyncio.Event()
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as http:
            async def client() -> None:
                while not done.is_set():
                    codes.append((await http.post("/v1/chat/completions", json=body)).status_code)

            async def watch() -> None:
                deadline = time.monotonic() + limit_s
                while time.monotonic() < deadline and not done.is_set():
                    counts.append(await asyncio.to_thread(_replicas, autoscaled))
                    if counts[-1] == 2:
                        done.set()
                    await asyncio.sleep(0.5)
                done.set()

            await asyncio.gather(watch(), *(client() for _ in range(8)))

    asyncio.run(load_until_two_replicas(150))
    assert max(counts) == 2, counts  # scaled up under load
    # ... and back down once idle, while a trickle of requests keeps flowing.
    deadline = time.monotonic() + 90
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        while _replicas(autoscaled) > 1 and time.monotonic() < deadline:
            codes.append(http.post("/v1/chat/completions", json=one).status_code)
            time.sleep(0.5)
        for _ in range(5):  # served by the one left
            codes.append(http.post("/v1/chat/completions", json=one).status_code)
    assert _replicas(autoscaled) == 1
    assert codes and set(codes) == {200}, {c: codes.count(c) for c in set(codes)}
