"""The gateway on real Ray Serve: two ingress replicas (the /gw application) sharing keys,
limits, cache and breakers through the state actor."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import httpx
import openai
import pytest
import ray

from tests.conftest import ROOT
from tests.integration.conftest import CORS_ORIGIN, MODELS

MSG = [{"role": "user", "content": "Tell me about Paris."}]


def admin(server) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.admin_key()}"}


def create_key(server, **fields) -> tuple[str, str]:
    with httpx.Client(base_url=server.gateway_url, timeout=30) as http:
        response = http.post("/admin/keys", json={"name": "it", **fields}, headers=admin(server))
    assert response.status_code == 201, response.text
    return response.json()["key"], response.json()["id"]


def gw_client(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.gateway_url}/v1", api_key=key, max_retries=0)


def cli(server, *args: str, command: str = "keys") -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_SERVER_STATE_DIR": str(server.state_dir)}
    return subprocess.run(
        [sys.executable, "-m", "serve_app.cli", command, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )


def test_auth_is_required_and_health_is_open(server):
    with httpx.Client(base_url=server.gateway_url, timeout=30) as http:
        assert http.get("/health").status_code == 200
        ready = http.get("/ready")
        assert ready.status_code == 200
        # Without a key: ready, with counts, and no model names; an admin key sees every name.
        assert set(ready.json()) == {"status", "models_ready", "models_total"}
        assert ready.json()["models_ready"] == ready.json()["models_total"] >= len(MODELS)
        named = http.get("/ready", headers=admin(server)).json()["models"]
        assert {m: named.get(m) for m in MODELS} == {m: "ready" for m in MODELS}
        missing = http.post("/v1/embeddings", json={"model": "tiny-bert", "input": "x"})
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
        assert http.get("/status").status_code == 401
        assert http.get("/status", headers=admin(server)).status_code == 200


def test_openai_client_error_types(server):
    key, _ = create_key(server, models=["tiny-bert"], rpm=1)
    with pytest.raises(openai.AuthenticationError):
        gw_client(server, "hf_" + "x" * 43).embeddings.create(model="tiny-bert", input="x")
    with pytest.raises(openai.NotFoundError) as not_found:
        gw_client(server, key).chat.completions.create(model="tiny-llama", messages=MSG, max_tokens=2)
    assert "do not have access" in not_found.value.body["message"]
    assert gw_client(server, key).embeddings.create(model="tiny-bert", input="once").data
    with pytest.raises(openai.RateLimitError) as limited:
        gw_client(server, key).embeddings.create(model="tiny-bert", input="twice")
    assert limited.value.body["code"] == "rate_limit_exceeded"
    assert int(limited.value.response.headers["retry-after"]) >= 1


def test_rpm_holds_across_two_ingress_replicas(server):
    key, _ = create_key(server, rpm=10)

    async def run():
        async with httpx.AsyncClient(base_url=server.gateway_url, timeout=60, headers={"Authorization": f"Bearer {key}"}) as http:
            async def one(i):
                response = await http.post("/v1/embeddings", json={"model": "tiny-bert", "input": f"request {i}"})
                return response.status_code

            statuses = []
            for wave in range(5):  # concurrent waves, so the proxy spreads them over both replicas
                statuses += await asyncio.gather(*(one(wave * 5 + i) for i in range(5)))
            return statuses

    statuses = asyncio.run(run())
    assert set(statuses) <= {200, 429}
    assert 10 <= statuses.count(200) <= 11


def test_revocation_reaches_every_replica_within_two_seconds(server):
    created = cli(server, "create", "--name", "cli key", "--json")
    assert created.returncode == 0, created.stderr
    import json

    record = json.loads(created.stdout)
    headers = {"Authorization": f"Bearer {record['key']}"}
    with httpx.Client(base_url=server.gateway_url, timeout=30, headers=headers) as http:
        # a key created on the store works on the running server at once
        assert all(http.get("/v1/models").status_code == 200 for _ in range(6))
        revoked = cli(server, "revoke", record["id"])
        assert revoked.returncode == 0, revoked.stderr
        started = time.monotonic()
        seen: list[tuple[float, int]] = []  # (sent, seconds after the revocation; status)
        streak = 0
        while streak < 8:  # 8 consecutive refusals: both replicas refuse it
            sent = time.monotonic() - started
            seen.append((sent, http.get("/v1/models").status_code))
            streak = streak + 1 if seen[-1][1] == 401 else 0
            assert sent < 30, f"revocation did not propagate: {seen[-10:]}"
    # What a replica trusts expires after key_cache_ttl_s (1 s), so a request sent 2 s or more
    # after the revocation is refused however slowly the machine answers (docs: within 2 s).
    late = [(sent, status) for sent, status in seen if sent >= 2.0]
    assert all(status == 401 for _, status in late), late


def test_every_authenticated_response_carries_rate_limit_headers(server):
    key, _ = create_key(server, rpm=100, tpm=100_000)
    with httpx.Client(base_url=server.gateway_url, timeout=60, headers={"Authorization": f"Bearer {key}"}) as http:
        ok = http.post("/v1/chat/completions", json={"model": "tiny-llama", "messages": MSG, "max_tokens": 4})
        bad = http.post("/v1/chat/completions", json={"model": "tiny-llama", "messages": []})
        listing = http.get("/v1/models")
    for response in (ok, bad, listing):
        for header in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "x-ratelimit-limit-requests",
                       "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests", "x-ratelimit-limit-tokens",
                       "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"):
            assert header in response.headers, (response.status_code, header)
    assert ok.headers["x-ratelimit-limit-requests"] == "100"
    assert int(ok.headers["x-ratelimit-remaining-tokens"]) < 100_000


def test_streamed_cache_replay_and_per_key_isolation(server):
    alice, _ = create_key(server, name="alice")
    bob, _ = create_key(server, name="bob")
    body = {"model": "tiny-llama", "messages": MSG, "max_tokens": 12, "temperature": 0}
    with httpx.Client(base_url=server.gateway_url, timeout=60) as http:
        first = http.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {alice}"})
        assert first.headers["x-cache"] == "MISS"
        deadline = time.monotonic() + 5
        while True:  # the store is flushed to the state actor in the background
            again = http.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {alice}"})
            if again.headers["x-cache"] == "HIT" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert again.headers["x-cache"] == "HIT"
        assert again.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]
        other = http.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {bob}"})
        assert other.headers["x-cache"] == "MISS"  # bob cannot see alice's entries
    # Replicas learn of each other's entries within a sync period (the stream may land on the
    # replica that did not store it).
    deadline = time.monotonic() + 5
    while True:
        stream = gw_client(server, alice).chat.completions.with_raw_response.create(
            **body, stream=True, stream_options={"include_usage": True}
        )
        if stream.headers["x-cache"] == "HIT" or time.monotonic() > deadline:
            break
        list(stream.parse())
        time.sleep(0.2)
    assert stream.headers["x-cache"] == "HIT"
    chunks = list(stream.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == first.json()["choices"][0]["message"]["content"]
    assert chunks[-1].usage.completion_tokens == 12


def test_backpressure_is_a_fast_503(server):
    body = {"model": "tiny-llama-hf", "messages": MSG, "max_tokens": 400, "temperature": 1}

    async def run():
        async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as http:
            async def one():
                started = time.monotonic()
                response = await http.post("/v1/chat/completions", json=body)
                return response, time.monotonic() - started

            return await asyncio.gather(*(one() for _ in range(10)))

    results = asyncio.run(run())
    refused = [(r, t) for r, t in results if r.status_code == 503]
    assert refused, [r.status_code for r, _ in results]
    for response, took in refused:
        assert response.json()["error"]["code"] == "model_overloaded"
        assert int(response.headers["retry-after"]) >= 1
        assert took < server.plan.models["tiny-llama-hf"].request_timeout_s  # refused, not timed out after a hang
    assert {r.status_code for r, _ in results} <= {200, 503}


def _replica_actors(app: str):
    return [
        actor for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith(f"SERVE_REPLICA::{app}#")
    ]


def test_killed_replica_trips_the_breaker_and_recovery_closes_it(server):
    key, _ = create_key(server, rpm=100_000)
    headers = {"Authorization": f"Bearer {key}"}

    def call(http):
        return http.post("/v1/embeddings", json={"model": "tiny-bert-fragile", "input": f"x {time.monotonic()}"},
                         headers={**headers, "Cache-Control": "no-cache"})

    with httpx.Client(base_url=server.gateway_url, timeout=60) as http:
        assert call(http).status_code == 200
        (replica,) = _replica_actors("tiny-bert-fragile")
        ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]), no_restart=True)
        statuses = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            response = call(http)
            statuses.append((response.status_code, response.json().get("error", {}).get("message", "")[:60]))
            if response.status_code == 503 and "circuit breaker" in response.json()["error"]["message"]:
                break
            time.sleep(0.05)
        assert statuses[-1][0] == 503, statuses
        assert response.json()["error"]["code"] == "model_unavailable"
        assert int(response.headers["retry-after"]) >= 1
        assert {status for status, _ in statuses} <= {200, 503, 504}
        # Every replica shows it once its next sync lands (within a second even when idle).
        deadline = time.monotonic() + 10
        while True:
            card = http.get("/v1/models/tiny-bert-fragile", headers=headers).json()
            if card["status"] in ("circuit_open", "circuit_half_open") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert card["status"] in ("circuit_open", "circuit_half_open")
        # Serve replaces the replica; after the breaker's timeout a probe closes it again.
        deadline = time.monotonic() + 120
        seen = []
        while time.monotonic() < deadline:
            response = call(http)
            seen.append((response.status_code, response.json().get("error", {}).get("message", "")[:50]))
            if response.status_code == 200:
                break
            time.sleep(0.5)
        assert seen[-1][0] == 200, (seen[-5:], ray.serve.status().applications["tiny-bert-fragile"])
        status = http.get("/status", headers=admin(server)).json()
        fragile = next(m for m in status["models"] if m["id"] == "tiny-bert-fragile")
        assert fragile["circuit_breaker"]["state"] == "closed"


def test_killing_the_state_actor_degrades_gracefully(server):
    key, key_id = create_key(server, rpm=10_000)
    headers = {"Authorization": f"Bearer {key}"}
    state = ray.get_actor("hfserve_state", namespace="hfserve")

    statuses: list[int] = []
    killed_at: list[int] = []  # how many answers came before the kill

    async def traffic(http):
        i = 0
        while not killed_at or len(statuses) < killed_at[0] + 20:  # 20 answers after the kill
            i += 1
            response = await http.post("/v1/embeddings", json={"model": "tiny-bert", "input": f"during {i}"}, headers=headers)
            statuses.append(response.status_code)

    async def run():
        async with httpx.AsyncClient(base_url=server.gateway_url, timeout=60) as http:
            task = asyncio.create_task(traffic(http))
            deadline = time.monotonic() + 60
            while len(statuses) < 5 and not task.done():  # traffic flows before the kill
                assert time.monotonic() < deadline, statuses
                await asyncio.sleep(0.05)
            killed_at.append(len(statuses))
            ray.kill(state, no_restart=False)  # max_restarts=-1: it comes back
            await asyncio.wait_for(task, 120)

    asyncio.run(run())
    errors = [s for s in statuses if s >= 500]
    assert len(errors) <= 2, statuses  # at most the calls in flight at the kill
    with httpx.Client(base_url=server.gateway_url, timeout=30) as http:
        deadline = time.monotonic() + 30
        while http.get("/status", headers=admin(server)).json()["state"].get("error") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert http.get("/v1/models", headers=headers).status_code == 200  # the key survived (SQLite)
        assert http.get(f"/admin/keys/{key_id}", headers=admin(server)).json()["id"] == key_id


def test_bad_auth_headers_change_nothing(server):
    with httpx.Client(base_url=server.gateway_url, timeout=30) as http:
        before = http.get("/admin/keys", headers=admin(server)).json()["data"]
        for headers in (
            {"Authorization": "Bearer " + "z" * 5000},
            {"Authorization": "Token abc"},
            {"X-API-Key": "sk-" + "q" * 43},
            {"X-API-Key": "hf_'; DELETE FROM api_keys; --"},
        ):
            response = http.post("/v1/embeddings", json={"model": "tiny-bert", "input": "x"}, headers=headers)
            assert response.status_code == 401, headers
        bad = http.post("/admin/keys", json={"name": "x'); DROP TABLE api_keys; --"}, headers=admin(server))
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "name"
        for fields in ({"name": "n", "rpm": -1}, {"name": "n", "tpm": 10**15}):
            assert http.post("/admin/keys", json=fields, headers=admin(server)).status_code == 400
        after = http.get("/admin/keys", headers=admin(server)).json()["data"]
    assert [k["id"] for k in after] == [k["id"] for k in before]


def test_an_update_through_the_cli_reaches_every_replica_within_two_seconds(server):
    key, key_id = create_key(server, models=["tiny-bert"])
    body = {"model": "tiny-bert", "input": "hello"}
    with httpx.Client(base_url=server.gateway_url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as http:
        assert all(http.post("/v1/embeddings", json=body).status_code == 200 for _ in range(6))
        env = {**os.environ, "HF_SERVER_STATE_DIR": str(server.state_dir)}
        updated = subprocess.run([sys.executable, "-m", "serve_app.cli", "keys", "--url", server.gateway_url, "--json",
                                  "update", key_id, "--models", "tiny-classifier", "--metadata", '{"team": "it"}'],
                                 capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
        assert updated.returncode == 0, updated.stderr
        assert json.loads(updated.stdout)["allowed_models"] == ["tiny-classifier"]
        started = time.monotonic()
        seen: list[tuple[float, int]] = []
        streak = 0
        while streak < 8:  # 8 refusals in a row: both replicas apply the new model list
            sent = time.monotonic() - started
            seen.append((sent, http.post("/v1/embeddings", json=body).status_code))
            streak = streak + 1 if seen[-1][1] == 404 else 0
            assert sent < 30, f"the update did not propagate: {seen[-10:]}"
    late = [(sent, status) for sent, status in seen if sent >= 2.0]  # as a revocation: key_cache_ttl_s (1 s) + slack
    assert all(status == 404 for _, status in late), late


def test_a_browser_preflight_passes_haproxy_without_a_key_and_the_call_needs_one(server):
    origin = {"Origin": CORS_ORIGIN}
    with httpx.Client(base_url=server.gateway_url, timeout=30) as http:
        preflight = http.options("/v1/chat/completions", headers={
            **origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"})
        refused = http.post("/v1/chat/completions", json={"model": "tiny-llama", "messages": MSG}, headers=origin)
        key, _ = create_key(server)
        listed = http.get("/v1/models", headers={**origin, "Authorization": f"Bearer {key}"})
        elsewhere = http.options("/v1/chat/completions", headers={
            "Origin": "https://other.example", "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == CORS_ORIGIN
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == CORS_ORIGIN
    assert "Missing API key" in refused.json()["error"]["message"]
    assert listed.status_code == 200 and "x-ratelimit-remaining-requests" in listed.headers["access-control-expose-headers"]
    assert elsewhere.status_code == 400 and "access-control-allow-origin" not in elsewhere.headers


def test_a_token_budget_holds_across_both_replicas(server):
    key, key_id = create_key(server, budget_tokens=60, budget_period="day", rpm=100_000)
    body = {"model": "tiny-bert", "input": "one two three"}

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.gateway_url, timeout=60,
                                     headers={"Authorization": f"Bearer {key}", "Cache-Control": "no-cache"}) as http:
            return list(await asyncio.gather(*(http.post("/v1/embeddings", json=body) for _ in range(40))))

    answers = asyncio.run(run())
    served = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code != 200]
    assert served and refused and {a.status_code for a in refused} == {429}, [a.text for a in refused[:2]]
    assert {a.json()["error"]["code"] for a in refused} == {"budget_exceeded"}
    # Admission reserves the gateway's estimate (13 characters // 4 + 2 = 5 tokens) from the one
    # budget both replicas lease from: 12 requests at most, where a budget per replica would let 24.
    assert len(served) <= 60 // 5, len(served)
    assert 1 <= int(refused[0].headers["retry-after"]) <= 86400


def test_usage_is_reported_per_key_model_and_day_across_both_replicas(server):
    key, key_id = create_key(server)
    with httpx.Client(base_url=server.gateway_url, timeout=60, headers={"Authorization": f"Bearer {key}"}) as http:
        for text in ("one", "two", "three"):
            assert http.post("/v1/embeddings", json={"model": "tiny-bert", "input": text}).status_code == 200
        too_long = {"model": "tiny-llama", "messages": MSG, "max_tokens": 10**9}  # refused once the model is known
        assert http.post("/v1/chat/completions", json=too_long).status_code == 400
    admin_headers = {"Authorization": f"Bearer {server.admin_key()}"}
    deadline, rows = time.monotonic() + 15, []
    with httpx.Client(base_url=server.gateway_url, timeout=30, headers=admin_headers) as http:
        while time.monotonic() < deadline:  # each replica flushes its batch every second
            rows = http.get(f"/admin/usage?key={key_id}&group_by=model").json()["data"]
            if sum(row["requests"] for row in rows) == 4:
                break
            time.sleep(0.25)
        as_csv = http.get(f"/admin/usage?key={key_id}&group_by=key", headers={"Accept": "text/csv"})
    by_model = {row["model"]: row for row in rows}
    assert set(by_model) == {"tiny-bert", "tiny-llama"}, rows
    bert, llama = by_model["tiny-bert"], by_model["tiny-llama"]
    assert (bert["requests"], bert["errors"], bert["completion_tokens"]) == (3, 0, 0) and bert["prompt_tokens"] > 0
    assert (llama["requests"], llama["errors"]) == (1, 1)
    assert as_csv.status_code == 200 and as_csv.text.splitlines()[1].startswith(f"{key_id},4,")


def test_a_team_budget_and_model_access_hold_for_its_keys_across_both_replicas(server):
    key_a, id_a = create_key(server, rpm=100_000)
    key_b, id_b = create_key(server, rpm=100_000)
    made = cli(server, "create", "--url", server.gateway_url, "--json", "--name", "it-team", "--keys", f"{id_a},{id_b}",
               "--models", "tiny-bert", "--budget-tokens", "60", "--budget-period", "day", command="teams")
    assert made.returncode == 0, made.stderr
    team_id = json.loads(made.stdout)["id"]

    async def run() -> list:
        clients = [openai.AsyncOpenAI(base_url=f"{server.gateway_url}/v1", api_key=key, max_retries=0,
                                      default_headers={"Cache-Control": "no-cache"}) for key in (key_a, key_b)]

        async def one(client: openai.AsyncOpenAI):
            try:
                return await client.embeddings.with_raw_response.create(model="tiny-bert", input="one two three")
            except openai.RateLimitError as error:
                return error

        return list(await asyncio.gather(*(one(clients[i % 2]) for i in range(40))))

    answers = asyncio.run(run())
    served = [a for a in answers if not isinstance(a, Exception)]
    refused = [a for a in answers if isinstance(a, Exception)]
    assert served and refused and {a.body["code"] for a in refused} == {"budget_exceeded"}
    assert all(a.body["message"].startswith("Team Token budget reached") for a in refused)
    # Both keys spend the one team budget, through both replicas: 12 requests of 5 estimated tokens.
    assert len(served) <= 60 // 5, len(served)
    assert int(served[0].headers["x-ratelimit-remaining-budget-tokens"]) < 60
    with pytest.raises(openai.NotFoundError):  # the team allows tiny-bert only
        gw_client(server, key_a).chat.completions.create(model="tiny-llama", messages=MSG, max_tokens=2)
    listed = cli(server, "info", team_id, "--url", server.gateway_url, "--json", command="teams")
    assert json.loads(listed.stdout)["keys"] == [id_a, id_b]
