"""/metrics across two nodes: an ingress replica on each node and a model on each, requests
through both nodes' proxies, and one scrape that counts every one of them (gathered from both
nodes' Ray metrics agents). Also how long that scrape takes (target: 250 ms p50)."""

from __future__ import annotations

import copy
import statistics
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster.conftest import TwoNodes, wait_for

PREFIX = "/spread"
CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 1}
EMBED = {"model": "embed", "input": ["a", "b"]}


def _spread_ingress(config: dict) -> dict:
    """A second ingress application with two replicas, at most one per node: one on each."""
    ingress = copy.deepcopy(config["applications"][0])
    ingress.update({"name": "spread", "route_prefix": PREFIX})
    ingress["args"].update({"metrics_key_label": True, "metrics_refresh_s": 2.0})  # Ray's interval in these tests
    ingress["deployments"] = [{"name": "Ingress", "num_replicas": 2, "max_replicas_per_node": 1,
                               "ray_actor_options": {"num_cpus": 0.05}}]
    return {**config, "applications": config["applications"] + [ingress]}


def _requests_of(text: str, key_id: str) -> float:
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "hf_server_requests_total" and sample.labels.get("key_id") == key_id)


def _ingress_nodes() -> set[str]:
    from ray.util.state import list_actors

    return {a.node_id for a in list_actors(filters=[("state", "=", "ALIVE")], limit=10_000)
            if (a.name or "").startswith("SERVE_REPLICA::spread#Ingress")}


def test_counts_add_up_over_two_ingress_replicas_on_two_nodes(two_nodes: TwoNodes):
    two_nodes.deploy(_spread_ingress(two_nodes.config))
    try:
        wait_for(lambda: len(_ingress_nodes()) == 2, 180, 1.0, "an ingress replica on each node")
        admin = {"Authorization": f"Bearer {two_nodes.admin_key()}"}

        def make_key():
            response = httpx.post(f"{two_nodes.head_url}{PREFIX}/admin/keys", json={"name": "spread"}, headers=admin, timeout=30)
            return response if response.status_code == 201 else None

        created = wait_for(make_key, 60, 1.0, "the spread ingress answering").json()
        key = {"Authorization": f"Bearer {created['key']}"}
        sent = 0
        for url in (two_nodes.head_url, two_nodes.worker_url):  # both proxies, each routing to both replicas
            with httpx.Client(base_url=url + PREFIX, headers=key, timeout=60) as http:
                for _ in range(6):
                    assert http.post("/v1/chat/completions", json=CHAT).status_code == 200
                    assert http.post("/v1/embeddings", json=EMBED).status_code == 200
                    sent += 2
        scrape_url = f"{two_nodes.head_url}{PREFIX}/metrics"

        def counted():
            response = httpx.get(scrape_url, headers=admin, timeout=30)
            return response.text if response.status_code == 200 and _requests_of(response.text, created["id"]) >= sent else None

        text = wait_for(counted, 90, 2.0, f"{sent} requests counted in /metrics")
        assert _requests_of(text, created["id"]) == sent  # N sent, N counted: not one more
        times = []
        with httpx.Client(headers=admin, timeout=30) as http:
            for _ in range(20):  # a second apart, as a (fast) Prometheus would scrape
                started = time.perf_counter()
                assert http.get(scrape_url).status_code == 200
                times.append(time.perf_counter() - started)
                time.sleep(1.0)
        two_nodes.measured["metrics_scrape_p50_ms"] = round(statistics.median(times) * 1000, 1)
        two_nodes.measured["metrics_scrape_max_ms"] = round(max(times) * 1000, 1)
        print(f"\n[cluster] /metrics over 2 nodes: p50 {statistics.median(times) * 1000:.1f} ms, "
              f"max {max(times) * 1000:.1f} ms; {sent} requests sent, {sent} counted")
    finally:
        two_nodes.deploy(two_nodes.config)
        wait_for(lambda: not _ingress_nodes(), 120, 1.0, "the spread ingress gone")
