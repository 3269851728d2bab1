"""What issue 9 changed in the gateway, the state and the replica, without Ray: calls bounded
by progress, a cache revision shared by replicas, busy replicas staying ready, a redeploy's
settings reaching the shared state, heartbeats from the replica."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from deployments.server import ModelServer
from deployments.sources import stable_revision
from serve_app.state.core import StateCore, StateSettings
from serve_app.state.keys import read_admin_key_file
from tests.unit.fakes import Clock, make_app

MSG = [{"role": "user", "content": "hello big world"}]


@pytest.fixture
def gw(serve, tmp_path):
    app, gateway, core = make_app(tmp_path, serve, circuit_breaker_threshold=2, circuit_breaker_timeout_s=30,
                                  state_clock=Clock(1000.0))
    with TestClient(app) as client:
        yield client, gateway, core, {"Authorization": f"Bearer {read_admin_key_file(tmp_path)}"}


# ----------------------------------------------------------------------------- progress, not totals


def test_whole_generations_are_bounded_by_progress_and_small_embeddings_outright(gw, serve):
    client, _, _, admin = gw
    chat, embed = serve.models["chat-model"], serve.models["embed-model"]
    assert client.post("/v1/chat/completions", json={"model": "chat-model", "messages": MSG}, headers=admin).status_code == 200
    assert getattr(chat, "progress_calls", 0) == 1
    # The fake's batch is 4 inputs: 4 go in one bounded call, 5 through the progress stream.
    small = {"model": "embed-model", "input": ["a", "b", "c", "d"]}
    large = {"model": "embed-model", "input": ["a", "b", "c", "d", "e"]}
    assert client.post("/v1/embeddings", json=small, headers={**admin, "Cache-Control": "no-cache"}).status_code == 200
    assert getattr(embed, "progress_calls", 0) == 0
    assert client.post("/v1/embeddings", json=large, headers={**admin, "Cache-Control": "no-cache"}).status_code == 200
    assert embed.progress_calls == 1


async def _collect(stream) -> list:
    return [item async for item in stream]


def test_the_replica_sends_heartbeats_while_it_works_then_the_answer():
    async def slow_chat(request):
        await asyncio.sleep(0.35)
        return f"answer to {request}"

    fake = SimpleNamespace(chat=slow_chat)
    items = asyncio.run(_collect(ModelServer.call_with_heartbeats(fake, "chat", "q", heartbeat_s=0.1)))
    assert items[-1] == "answer to q" and items[:-1] == [None] * len(items[:-1]) and len(items) >= 3


def test_a_caller_that_goes_away_cancels_the_work():
    cancelled = asyncio.Event()

    async def endless(request):
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def run():
        stream = ModelServer.call_with_heartbeats(SimpleNamespace(embed=endless), "embed", "x", heartbeat_s=0.05)
        assert await stream.__anext__() is None  # started
        assert await stream.__anext__() is None  # a heartbeat: the work is running
        await stream.aclose()
        await asyncio.wait_for(cancelled.wait(), 1)

    asyncio.run(run())


def test_only_the_long_unary_methods_can_be_called_with_heartbeats():
    from contract.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError):
        asyncio.run(_collect(ModelServer.call_with_heartbeats(SimpleNamespace(), "info", None)))


# ----------------------------------------------------------------------------- the cache revision


def test_the_revision_is_the_same_for_every_replica_and_changes_with_the_files(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "weights.bin").write_bytes(b"1234")
    first = stable_revision(str(model), None, "embedding", "fp32")
    (model / "weights.bin").touch()  # another node's copy: same bytes, another mtime
    assert stable_revision(str(model), None, "embedding", "fp32") == first
    assert stable_revision(str(model), None, "embedding", "int8") != first
    (model / "weights.bin").write_bytes(b"12345")
    assert stable_revision(str(model), None, "embedding", "fp32") != first


def test_two_replicas_of_one_version_keep_the_cache_and_a_new_version_clears_it(gw, serve):
    client, gateway, core, admin = gw
    model = serve.models["chat-model"]
    body = {"model": "chat-model", "messages": MSG, "temperature": 0}
    assert client.post("/v1/chat/completions", json=body, headers=admin).headers["x-cache"] == "MISS"
    client.portal.call(gateway.cache.flush)
    # info() answered by either replica, each loaded at its own time, of the one version.
    for replica, created in (("r2", 456), ("r1", 123), ("r2", 456)):
        model.replica_id, model.created = replica, created
        client.portal.call(gateway.directory.refresh)
    assert core.cache.stats().entries == 1
    assert client.post("/v1/chat/completions", json=body, headers=admin).headers["x-cache"] == "HIT"
    model.version = "v2"  # new files or options: a new version
    client.portal.call(gateway.directory.refresh)
    assert core.cache.stats().entries == 0


# ----------------------------------------------------------------------------- directory


def test_a_busy_replica_stays_ready_and_one_that_never_answered_is_still_loading(gw, serve):
    client, gateway, _, _ = gw
    model = serve.models["chat-model"]
    original = model.info

    async def slow_info():
        await asyncio.sleep(5)

    model.info = slow_info
    gateway.directory._info_timeout_s = 0.05
    client.portal.call(gateway.directory.refresh)
    assert gateway.directory.status_of("chat-model") == "ready"
    gateway.directory._entries.pop("chat-model")
    client.portal.call(gateway.directory.refresh)
    assert gateway.directory.status_of("chat-model") == "loading"  # a 503 to retry, not a breaker failure
    model.info = original
    client.portal.call(gateway.directory.refresh)
    assert gateway.directory.status_of("chat-model") == "ready"


@pytest.mark.parametrize("error", ["BackPressureError", "TimeoutError"])
def test_a_replica_too_busy_to_answer_is_not_a_failed_model(gw, serve, error):
    """info() refused because the model's queue is full (as in a burst) or slow: still ready, and
    no failure reaches the breaker."""
    from ray.serve.exceptions import BackPressureError

    client, gateway, core, _ = gw
    client.portal.call(gateway.directory.refresh)
    model = serve.models["chat-model"]

    async def busy():
        raise BackPressureError(num_queued_requests=8, max_queued_requests=8) if error == "BackPressureError" else TimeoutError()

    model.info = busy
    for _ in range(3):
        client.portal.call(gateway.directory.refresh)
    assert gateway.directory.status_of("chat-model") == "ready"
    assert "chat-model" not in core.breaker_snapshots()


def test_a_dead_replica_makes_the_model_unavailable(gw, serve):
    from ray.exceptions import RayActorError

    client, gateway, _, admin = gw
    client.portal.call(gateway.directory.refresh)

    async def dead():
        raise RayActorError()

    serve.models["chat-model"].info = dead
    client.portal.call(gateway.directory.refresh)
    assert gateway.directory.status_of("chat-model") == "unavailable"
    # The same code a failed call or an open breaker gives: one code per fault, whichever hop
    # noticed it first (test_faults saw model_not_ready then model_unavailable for one fault).
    refused = client.post("/v1/chat/completions", json={"model": "chat-model", "messages": MSG},
                          headers={**admin, "Cache-Control": "no-cache"})
    assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
    assert refused.json()["error"]["code"] == "model_unavailable"


# ----------------------------------------------------------------------------- redeployed settings


def test_the_state_takes_a_redeploys_settings(tmp_path):
    core = StateCore(StateSettings(state_dir=tmp_path / "a", breaker_threshold=5, cache_max_entries=10))
    core.breaker_report("m", False)
    for i in range(10):
        core.cache_put([(f"k{i}", b"v", "m")])
    changed = core.configure(StateSettings(state_dir=tmp_path / "b", breaker_threshold=2, cache_max_entries=4))
    assert changed == ["state_dir", "cache_max_entries", "breaker_threshold"]
    assert core.cache.stats().entries == 4  # trimmed to the new size
    core.breaker_report("m", False)
    assert core.breaker_snapshots()["m"].state.value == "open"  # the new threshold, 2, applies
    assert (tmp_path / "b" / "keys.db").exists() and core.status()["settings"]["breaker_threshold"] == 2
    assert core.configure(core.settings) == []


def test_the_gateway_gives_the_state_its_settings_after_a_restart(gw):
    client, gateway, core, _ = gw
    client.portal.call(gateway.state_sync.sync)
    core.settings = core.settings.model_copy(update={"breaker_threshold": 9})  # as a restarted actor would have
    core.started += 1
    client.portal.call(gateway.state_sync.sync)
    assert core.settings.breaker_threshold == 2


def test_a_call_no_replica_started_in_time_is_a_503_to_retry_not_a_model_failure(gw, serve):
    from contract.model_api import NotStartedInTime

    client, gateway, core, admin = gw
    model = serve.models["chat-model"]

    async def queued(method, request, timeout_s, on_start=None):
        raise NotStartedInTime("no replica started 'chat' within 5s")

    model.call_with_progress = queued
    for _ in range(3):  # past the breaker's threshold (2): it must stay closed
        response = client.post("/v1/chat/completions", json={"model": "chat-model", "messages": MSG, "temperature": 1},
                               headers=admin)
        assert response.status_code == 503 and response.json()["error"]["code"] == "model_overloaded"
        assert int(response.headers["retry-after"]) >= 1
    assert "chat-model" not in core.breaker_snapshots() or core.breaker_snapshots()["chat-model"].state.value == "closed"


def test_the_replica_says_it_started_before_the_first_heartbeat():
    async def quick(request):
        return "done"

    items = asyncio.run(_collect(ModelServer.call_with_heartbeats(SimpleNamespace(complete=quick), "complete", "x", 1.0)))
    assert items == [None, "done"]


def test_a_replacement_is_ready_before_the_breaker_hears_of_it(serve):
    """A request arriving while the breaker is told of the new replica must not find the model
    still unavailable (its failure report would re-open the breaker just set half-open)."""
    from serve_app.ingress.model_directory import AppState, ModelDirectory

    seen: list[str | None] = []

    async def on_new_replica(model: str) -> None:
        seen.append(directory.status_of(model))

    directory = ModelDirectory(serve.list_apps, serve.connect, on_new_replica=on_new_replica)

    async def run() -> None:
        await directory.refresh()
        serve.states["chat-model"] = AppState("chat-model", "UNHEALTHY", "replica died")
        await directory.refresh()
        assert directory.status_of("chat-model") == "unavailable"
        serve.models["chat-model"].replica_id = "r2"
        serve.states["chat-model"] = AppState("chat-model", "RUNNING")
        await directory.refresh()

    asyncio.run(run())
    assert seen == ["ready"]
