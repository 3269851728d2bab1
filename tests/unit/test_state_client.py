"""The typed state client: one method per StateCore operation the ingress uses, with its name
and positional parameters; over the in-process transport it returns what StateCore returns;
a timeout or a dead actor is StateUnavailable, other errors reach the caller as they are."""

from __future__ import annotations

import asyncio
import inspect

import pytest
from ray import exceptions

from contract.lifecycle import RuntimeModel
from serve_app.state.client import StateClient, StateUnavailable
from serve_app.state.core import StateCore, StateSettings
from serve_app.state.keys import KeyUsage, NewKey, hash_key
from serve_app.state.rate_limiter import Limits

# Public StateCore methods only the actor itself calls (each sync records the gauges).
ACTOR_ONLY = {"breaker_snapshots", "record_gauges"}


def run(call):
    return asyncio.run(call)


def operations(cls, is_method) -> set[str]:
    return {name for name, member in vars(cls).items() if not name.startswith("_") and is_method(member)}


def test_every_state_operation_has_a_typed_method_with_its_parameters():
    core_ops = operations(StateCore, inspect.isfunction) - ACTOR_ONLY
    client_ops = operations(StateClient, inspect.iscoroutinefunction)
    assert core_ops == client_ops
    for name in core_ops:
        core, client = inspect.signature(getattr(StateCore, name)), inspect.signature(getattr(StateClient, name))
        *params, timeout = client.parameters.values()
        assert params == list(core.parameters.values()), name
        assert (timeout.name, timeout.kind, timeout.default) == ("timeout_s", inspect.Parameter.KEYWORD_ONLY, None)
        assert client.return_annotation == core.return_annotation, name


@pytest.fixture
def twins(tmp_path):
    """Two cores on one clock: one called directly, one through the typed client."""
    direct = StateCore(StateSettings(state_dir=tmp_path / "direct"), clock=lambda: 1000.0)
    behind = StateCore(StateSettings(state_dir=tmp_path / "behind"), clock=lambda: 1000.0)
    return direct, behind, StateClient.local(behind)


def test_the_typed_client_returns_what_the_core_returns(twins):
    direct, behind, client = twins
    limits = Limits(rpm=10, tpm=1000)
    model = RuntimeModel(model="m", state="loading", args={"source": "/m/m", "task": "embedding"}, requested_at=1.0)

    def same(core_answer, client_call):
        assert run(client_call) == core_answer

    same(direct.lease("k", limits, 1, 10, 2, 100), client.lease("k", limits, 1, 10, 2, 100))
    same(direct.give_back([("k", 1, 1, 50)]), client.give_back([("k", 1, 1, 50)]))
    same(direct.lease("k", limits, 1, 10, 9, 900), client.lease("k", limits, 1, 10, 9, 900))
    same(direct.cache_put([("a", b"A", "m"), ("b", b"B", "n")]), client.cache_put([("a", b"A", "m"), ("b", b"B", "n")]))
    same(direct.cache_get(["a", "b", "c"]), client.cache_get(["a", "b", "c"]))
    same(direct.cache_invalidate("m"), client.cache_invalidate("m"))
    same(direct.breaker_report("m", False, "caller"), client.breaker_report("m", False, "caller"))
    same(direct.breaker_report("m", True), client.breaker_report("m", True))
    same(direct.breaker_probe("m"), client.breaker_probe("m"))
    same(direct.breaker_probed("m", None), client.breaker_probed("m", None))
    same(direct.breaker_replaced("m"), client.breaker_replaced("m"))
    same(direct.models_load(model, [], None, None), client.models_load(model, [], None, None))
    same(direct.models_list(), client.models_list())
    direct_unload, client_unload = direct.models_unload("m"), run(client.models_unload("m"))
    assert direct_unload.pop("unloading_since") and client_unload.pop("unloading_since")  # each its own time
    assert direct_unload == client_unload
    same(direct.models_unload("none"), client.models_unload("none"))
    # Each core has its own start time and models version; the rest of what a replica polls is the same.
    direct_sync = direct.sync(0, 3, 4, direct.models.version, {"m": 5.0})
    client_sync = run(client.sync(0, 3, 4, behind.models.version, {"m": 5.0}))
    assert direct_sync.pop("started") != client_sync.pop("started") and direct_sync == client_sync
    direct_status, client_status = direct.status(), run(client.status())
    for status in (direct_status, client_status):
        status.pop("uptime_s")
        status["settings"].pop("state_dir")
    assert direct_status == client_status


def test_the_typed_client_reads_and_writes_the_cores_keys(tmp_path):
    core = StateCore(StateSettings(state_dir=tmp_path))
    client = StateClient.local(core)
    key, record = run(client.create_key(NewKey(name="one")))
    assert core.find_key(hash_key(key)).key == record == run(client.find_key(hash_key(key))).key
    assert run(client.get_key(record.id)) == core.get_key(record.id)
    run(client.add_usage({record.id: KeyUsage(requests=2, prompt_tokens=3, completion_tokens=4)}))
    assert core.get_key(record.id).usage.requests == 2
    assert run(client.list_keys()) == core.list_keys()
    revoked = run(client.revoke_key(record.id))
    assert revoked.revoked_at is not None and core.get_key(record.id) is None
    assert run(client.get_key(record.id)) is None
    assert run(client.list_keys(True)) == core.list_keys(True)
    settings = core.settings.model_copy(update={"breaker_threshold": 2})
    assert run(client.configure(settings)) == ["breaker_threshold"] and core.settings == settings


def test_a_call_goes_by_the_methods_name_over_an_actor_handle():
    sent = []

    class Method:
        def __init__(self, name):
            self.name = name

        async def remote(self, *args):
            sent.append((self.name, args))
            return "answer"

    class Handle:
        def __getattr__(self, name):
            return Method(name)

    client = StateClient.ray_actor(Handle())
    assert run(client.breaker_report("m", False, timeout_s=0.5)) == "answer"
    assert run(client.sync(7)) == "answer"
    assert sent == [("breaker_report", ("m", False, None)), ("sync", (7, 0, 0, 0, None))]


def client_over(transport, timeout_s: float = 1.0) -> StateClient:
    async def call(method: str, args: tuple):
        return await transport()

    return StateClient(call, timeout_s=timeout_s)


def test_no_answer_in_time_is_state_unavailable():
    async def slow():
        await asyncio.sleep(0.2)
        return "late"

    with pytest.raises(StateUnavailable, match=r"state\.status timed out"):
        run(client_over(slow, timeout_s=0.01).status())
    with pytest.raises(StateUnavailable, match=r"state\.find_key timed out"):
        run(client_over(slow).find_key("digest", timeout_s=0.01))
    assert run(client_over(slow, timeout_s=0.01).status(timeout_s=2.0)) == "late"  # a call's own deadline wins


@pytest.mark.parametrize("error", [
    exceptions.RayActorError(),
    exceptions.ActorDiedError(),
    exceptions.ActorUnavailableError("restarting", None),
    StateUnavailable("already"),
])
def test_an_actor_that_died_or_restarts_is_state_unavailable(error):
    async def fails():
        raise error

    with pytest.raises(StateUnavailable):
        run(client_over(fails).lease("k", Limits(1, 1), 1, 1, 1, 1))


def test_other_errors_reach_the_caller_as_they_are():
    async def fails():
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        run(client_over(fails).cache_put([]))
