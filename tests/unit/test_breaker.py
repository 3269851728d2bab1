"""Circuit breaker transitions with an injected clock; then, through the gateway over fakes, that
one caller's failing requests cannot open a model's breaker for others while the model answers
a probe of the ingress's own, and that a message over the gRPC limit is that request's 413."""

from __future__ import annotations

import grpc
import pytest
from fastapi.testclient import TestClient

from contract.endpoints import ENDPOINTS
from contract.errors import InternalServerError
from serve_app.ingress.gateway import request_record
from serve_app.ingress.gateway.breaker_gate import probe_request
from serve_app.state.circuit_breaker import CircuitBreaker, Snapshot, State
from serve_app.state.client import StateUnavailable
from serve_app.state.keys import read_admin_key_file
from tests.unit.fakes import Clock, make_app


def test_opens_after_consecutive_failures_only():
    breaker = CircuitBreaker(threshold=3, timeout_s=10, clock=Clock())
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # resets the count
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.snapshot().state is State.CLOSED
    breaker.record_failure()
    snapshot = breaker.snapshot()
    assert snapshot.state is State.OPEN and snapshot.retry_after_s == 10
    assert not breaker.allow()


def test_half_open_lets_one_probe_then_closes_on_success():
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, timeout_s=5, clock=clock)
    breaker.record_failure()
    clock.now = 3
    assert breaker.snapshot().retry_after_s == 2
    clock.now = 5
    assert breaker.snapshot().state is State.HALF_OPEN
    assert breaker.allow() is True
    assert breaker.allow() is False  # only one probe
    breaker.record_success()
    assert breaker.snapshot().state is State.CLOSED and breaker.allow()


def test_failed_probe_reopens():
    clock = Clock()
    breaker = CircuitBreaker(threshold=2, timeout_s=5, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    clock.now = 6
    assert breaker.allow()
    breaker.record_failure()
    snapshot = breaker.snapshot()
    assert snapshot.state is State.OPEN and snapshot.retry_after_s == 5


def test_failures_while_open_do_not_extend_the_open_time():
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, timeout_s=10, clock=clock)
    breaker.record_failure()
    clock.now = 8
    breaker.record_failure()  # a request that was in flight when it opened
    breaker.record_failure()
    snapshot = breaker.snapshot()
    assert snapshot.state is State.OPEN and snapshot.retry_after_s == 2
    assert snapshot.consecutive_failures == 3
    clock.now = 10
    assert breaker.snapshot().state is State.HALF_OPEN


def test_a_replacement_replica_ends_the_open_time():
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, timeout_s=60, clock=clock)
    breaker.replaced()  # closed: nothing to do
    assert breaker.snapshot().state is State.CLOSED
    breaker.record_failure()
    clock.now = 1
    breaker.replaced()
    assert breaker.snapshot().state is State.HALF_OPEN
    assert breaker.allow() is True and breaker.allow() is False  # still exactly one probe
    breaker.record_success()
    assert breaker.snapshot().state is State.CLOSED


# ----------------------------------------------------------------------------- callers and probes


def test_one_callers_failures_make_a_probe_due_instead_of_opening():
    breaker = CircuitBreaker(threshold=2, timeout_s=10, clock=Clock())
    breaker.record_failure("mallory")
    breaker.record_failure("mallory")
    snapshot = breaker.snapshot()
    assert snapshot.state is State.CLOSED and snapshot.probe_due and breaker.allow()
    assert breaker.claim_probe() is True and breaker.claim_probe() is False  # one probe at a time
    breaker.record_failure("mallory")  # more of the same caller: still the probe's to decide
    assert breaker.snapshot().state is State.CLOSED
    breaker.record_probe(True)  # the model answers: it was mallory's requests
    assert breaker.snapshot() == Snapshot(State.CLOSED, 0, 0.0, probe_due=False)


def test_a_failed_probe_opens_and_a_busy_one_only_frees_the_claim():
    breaker = CircuitBreaker(threshold=2, timeout_s=10, clock=Clock())
    breaker.record_failure("anonymous")
    breaker.record_failure("anonymous")
    assert breaker.claim_probe()
    breaker.record_probe(None)  # no verdict (the model's queue was full): someone may probe again
    assert breaker.snapshot().probe_due and breaker.claim_probe()
    breaker.record_probe(False)
    snapshot = breaker.snapshot()
    assert snapshot.state is State.OPEN and snapshot.retry_after_s == 10 and not snapshot.probe_due


def test_failures_of_two_callers_open_without_a_probe():
    breaker = CircuitBreaker(threshold=3, timeout_s=10, clock=Clock())
    for caller in ("alice", "alice", "bob"):
        breaker.record_failure(caller)
    assert breaker.snapshot().state is State.OPEN and not breaker.claim_probe()


def test_half_open_reopens_on_evidence_of_its_own_never_on_one_callers_word():
    clock = Clock()
    breaker = CircuitBreaker(threshold=2, timeout_s=10, clock=clock)
    breaker.record_failure("alice")
    breaker.record_failure("bob")
    clock.now = 10
    assert breaker.snapshot().state is State.HALF_OPEN
    breaker.record_failure("alice")  # before the open time: not evidence that the fault remains
    breaker.record_failure("alice")
    assert breaker.snapshot().state is State.HALF_OPEN
    breaker.record_failure(None)  # Serve reports the replicas lost: no request caused that
    assert breaker.snapshot().state is State.OPEN


def test_an_unanswered_probe_claim_lapses():
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, timeout_s=10, clock=clock)
    breaker.record_failure()
    clock.now = 10
    assert breaker.claim_probe() and not breaker.claim_probe()
    clock.now = 19.9
    assert not breaker.claim_probe()
    clock.now = 20  # the ingress that claimed it never answered (it died, say)
    assert breaker.claim_probe()


def test_every_endpoint_has_a_probe_that_validates():
    for name, endpoint in ENDPOINTS.items():
        method, request = probe_request("m", [name])
        assert method == endpoint.method and isinstance(request, endpoint.request)
    assert probe_request("m", ["chat", "complete"])[0] == "complete"  # no chat template needed
    assert probe_request("m", []) is None


# ----------------------------------------------------------------------------- through the gateway

POISON = "poison"  # an input the fake model fails on, as some request's content can make a real one


@pytest.fixture
def gw(serve, tmp_path):
    app, gateway, core = make_app(tmp_path, serve, circuit_breaker_threshold=2, circuit_breaker_timeout_s=30,
                                  state_clock=Clock(1000.0), clock=Clock(0.0))
    model = serve.models["embed-model"]
    embed = model.embed

    async def fails_on_poison(request):
        if "ping" in request.inputs():  # the probe: in which request's context it runs
            model.probe_contexts = [*getattr(model, "probe_contexts", []), request_record.current()]
        if POISON in request.inputs():
            model.calls += 1
            raise InternalServerError("engine broke on this input")
        return await embed(request)

    model.embed = fails_on_poison
    with TestClient(app) as client:
        admin = {"Authorization": f"Bearer {read_admin_key_file(tmp_path)}"}

        def key() -> dict[str, str]:
            response = client.post("/admin/keys", json={"name": "k"}, headers=admin)
            assert response.status_code == 201
            return {"Authorization": f"Bearer {response.json()['key']}", "Cache-Control": "no-cache"}

        yield client, gateway, core, key


def _embed(client, headers, text):
    return client.post("/v1/embeddings", json={"model": "embed-model", "input": [text]}, headers=headers)


def test_one_keys_failures_alone_do_not_open_the_breaker_while_the_probe_answers(gw, serve):
    client, _, core, key = gw
    mallory, alice = key(), key()
    model = serve.models["embed-model"]
    first = _embed(client, mallory, POISON)
    assert first.status_code == 500 and "probe" not in first.json()["error"]["message"]
    assert "ping" not in model.embedded  # one failure: no probe yet
    for _ in range(3):  # to the threshold (2) twice
        response = _embed(client, mallory, POISON)
        assert response.status_code == 500
    assert model.embedded.count("ping") == 2  # a probe each time mallory alone reached the threshold
    # Outside the context of the request that started it: Serve cancels the model calls made in
    # a request's context when its client leaves, which would make a probe's verdict "it fails".
    assert model.probe_contexts == [None, None]
    error = response.json()["error"]
    assert "this request itself is the likely cause" in error["message"] and error["type"] == "internal_error"
    assert core.breaker_snapshots()["embed-model"].state.value == "closed"
    served = _embed(client, alice, "hello")
    assert served.status_code == 200 and served.json()["data"][0]["embedding"] == [5.0, 1.0]


def test_one_keys_failures_open_the_breaker_when_the_probe_fails_too(gw, serve):
    client, _, core, key = gw
    mallory, alice = key(), key()
    model = serve.models["embed-model"]
    assert _embed(client, mallory, POISON).status_code == 500
    model.fail = True  # the model itself breaks: its probe fails as well
    second = _embed(client, mallory, POISON)
    assert second.status_code == 500 and "probe" not in second.json()["error"]["message"]
    assert core.breaker_snapshots()["embed-model"].state.value == "open"
    calls = model.calls
    refused = _embed(client, alice, "hello")
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "model_unavailable"
    assert model.calls == calls


def test_two_keys_failures_open_the_breaker_without_a_probe(gw, serve):
    client, _, core, key = gw
    alice, bob, carol = key(), key(), key()
    assert _embed(client, alice, POISON).status_code == 500
    assert _embed(client, bob, POISON).status_code == 500
    assert "ping" not in serve.models["embed-model"].embedded
    refused = _embed(client, carol, "hello")
    assert refused.status_code == 503 and "circuit breaker" in refused.json()["error"]["message"]


def test_one_key_cannot_keep_a_half_open_breaker_open(gw, serve):
    client, gateway, core, key = gw
    mallory, alice = key(), key()
    model = serve.models["embed-model"]
    model.fail = True
    assert [_embed(client, alice, "x").status_code for _ in range(2)] == [500, 500]
    assert core.breaker_snapshots()["embed-model"].state.value == "open"
    model.fail = False
    core._clock.now += 31  # HALF_OPEN: the probe is the ingress's own, not mallory's request
    client.portal.call(gateway.state_sync.sync)
    assert _embed(client, mallory, POISON).status_code == 500
    assert core.breaker_snapshots()["embed-model"].state.value == "closed"
    assert _embed(client, alice, "hello").status_code == 200


@pytest.mark.parametrize("inputs", [1, 5], ids=["one-batch", "with-progress"])
def test_a_message_over_the_grpc_limit_is_the_requests_own_413(gw, serve, inputs):
    client, _, core, key = gw
    mallory, alice = key(), key()
    model = serve.models["embed-model"]

    async def too_large(request):  # what Serve raises when the answer is over the channel's limit
        raise grpc.aio.AioRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                   details="Received message larger than max (4299464 vs. 4194304)")

    model.embed = too_large
    body = {"model": "embed-model", "input": [f"text {i}" for i in range(inputs)]}
    for _ in range(3):
        response = client.post("/v1/embeddings", json=body, headers=mallory)
        assert response.status_code == 413, response.text
        error = response.json()["error"]
        assert error["code"] == "request_too_large" and error["type"] == "invalid_request_error"
        assert "fewer or shorter inputs" in error["message"]
    assert "embed-model" not in core.breaker_snapshots()  # no failure reached the breaker
    assert client.post("/v1/chat/completions", json={"model": "chat-model", "messages": [{"role": "user", "content": "hi"}]},
                       headers=alice).status_code == 200


def test_a_stale_half_open_copy_lets_the_request_on_once_another_replicas_probe_closed_it(gw, serve):
    client, gateway, core, key = gw
    for _ in range(2):
        core.breaker_report("embed-model", False)  # Serve reported the replicas lost
    core.breaker_replaced("embed-model")
    client.portal.call(gateway.state_sync.sync)  # this ingress's copy: half open
    assert core.breaker_probe("embed-model")[0]  # another ingress claims the probe ...
    core.breaker_probed("embed-model", True)  # ... and the model answers it
    assert _embed(client, key(), "hello").status_code == 200
    assert "ping" not in serve.models["embed-model"].embedded  # no second probe


def test_one_keys_failing_streams_alone_do_not_open_the_breaker(gw, serve):
    client, _, core, key = gw
    mallory, alice = key(), key()
    model = serve.models["chat-model"]
    check = model._check

    def fails_on_poison(request):
        check(request)
        if request.messages[-1].text() == POISON:
            raise InternalServerError("engine broke on this input")

    model._check = fails_on_poison
    stream = {"model": "chat-model", "messages": [{"role": "user", "content": POISON}], "stream": True}
    bodies = [client.post("/v1/chat/completions", json=stream, headers=mallory) for _ in range(2)]
    assert [b.status_code for b in bodies] == [500, 500]
    assert "this request itself is the likely cause" in bodies[1].json()["error"]["message"]
    assert core.breaker_snapshots()["chat-model"].state.value == "closed"
    served = client.post("/v1/chat/completions", json={**stream, "messages": [{"role": "user", "content": "hi"}]},
                         headers=alice)
    assert served.status_code == 200 and "data: [DONE]" in served.text


def test_a_requests_own_failure_is_charged_to_its_callers_tokens(gw, serve):
    """Refunded while it may be the model's fault; charged its reservation once the model
    answered the probe: the caller's own limits pay for requests that fail by themselves."""
    client, gateway, _, key = gw
    headers = {}
    for name in ("mallory", "bob"):
        created = client.post("/admin/keys", json={"name": name, "tpm": 10_000},
                              headers={"Authorization": f"Bearer {read_admin_key_file(gateway.args.state_dir)}"})
        headers[name] = {"Authorization": f"Bearer {created.json()['key']}", "Cache-Control": "no-cache"}
    first = _embed(client, headers["mallory"], POISON)  # one failure: refunded
    own = _embed(client, headers["mallory"], POISON)  # at the threshold, the probe answers: charged
    assert first.status_code == own.status_code == 500
    assert "likely cause" in own.json()["error"]["message"]
    gateway.directory.clock.now += 3  # past the leases: their unused quota goes back, and the next one tells
    client.portal.call(gateway.quota.flush)
    remaining = {name: int(_embed(client, h, "hello").headers["x-ratelimit-remaining-tokens"]) for name, h in headers.items()}
    assert remaining["bob"] - remaining["mallory"] == len(POISON) // 4 + 2  # the one reservation kept


def test_an_open_copy_counts_down_while_the_state_actor_is_unreachable(serve, tmp_path):
    clock = Clock(0.0)
    app, gateway, core = make_app(tmp_path, serve, circuit_breaker_threshold=2, circuit_breaker_timeout_s=30,
                                  state_clock=Clock(1000.0), clock=clock)
    with TestClient(app) as client:
        admin = {"Authorization": f"Bearer {read_admin_key_file(tmp_path)}", "Cache-Control": "no-cache"}
        assert _embed(client, admin, "hello").status_code == 200
        for _ in range(2):
            core.breaker_report("embed-model", False)  # Serve reported the replicas lost: open for 30 s
        client.portal.call(gateway.state_sync.sync)
        reach = gateway.state._transport

        async def unreachable(method: str, args: tuple):
            if method in ("sync", "breaker_probe", "breaker_report"):
                raise StateUnavailable(f"state.{method}: restarting")
            return await reach(method, args)

        gateway.state._transport = unreachable
        shut = _embed(client, admin, "hello")
        assert shut.status_code == 503 and shut.json()["error"]["code"] == "model_unavailable"
        assert shut.headers["Retry-After"] == "30"
        clock.now = 20.0
        client.portal.call(gateway.state_sync.sync)  # fails: the copy is the one from 20 s ago
        assert _embed(client, admin, "hello").headers["Retry-After"] == "10"
        clock.now = 31.0  # its time is up here, though no sync could say so
        assert _embed(client, admin, "hello").status_code == 200
