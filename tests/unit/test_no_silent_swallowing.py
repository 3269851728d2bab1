"""What used to be dropped without a word: a failing gauge refresh, a node's replica records that
did not come, and a fractional kv_cache_gb (rounded up to 1 GB). Each is now said or refused. No Ray."""

from __future__ import annotations

import logging
import sys
import types

import pytest
import yaml
from pydantic import ValidationError

import deployments.server as server_module
from contract.config import EnvOverrides, ModelAppArgs
from deployments.server import ModelServer
from hardware.probe import HardwareSupervisor
from observability.log_once import DistinctWarnings
from serve_app.cli.deploy_plan import DeployConfigError, plan_deploy
from tests.conftest import ROOT


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ray.serve" and r.levelno == logging.WARNING]


def test_a_distinct_problem_is_warned_once_and_a_new_one_again(caplog):
    said = DistinctWarnings(logging.getLogger("ray.serve"))
    with caplog.at_level(logging.DEBUG, logger="ray.serve"):
        assert said.warn("node %s: %s", "a", "down")
        assert not said.warn("node %s: %s", "a", "down")
        assert said.warn("node %s: %s", "b", "down")
    assert _warnings(caplog) == ["node a: down", "node b: down"]
    assert "node a: down (again)" in [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]


class _FailingTask:
    """stats() fails: twice one way, once another, then once more as the replica shuts down."""

    def __init__(self, owner: types.SimpleNamespace):
        self.owner, self.calls = owner, 0

    def stats(self):
        self.calls += 1
        if self.calls <= 2:
            raise RuntimeError("engine process gone")
        if self.calls == 3:
            raise KeyError("kv_cache_usage")
        self.owner._stopped = True
        raise RuntimeError("shutting down")


def test_a_failing_gauge_refresh_is_logged_once_per_error_and_the_thread_goes_on(monkeypatch, caplog):
    monkeypatch.setattr(server_module, "gauge_refresh_s", lambda: 0.0)
    replica = types.SimpleNamespace(_stopped=False, model_id="tiny", _meter=types.SimpleNamespace(engine=print))
    replica._task = _FailingTask(replica)
    with caplog.at_level(logging.DEBUG, logger="ray.serve"):
        ModelServer._refresh_gauges(replica)  # returns once stopped
    assert replica._task.calls == 4
    assert _warnings(caplog) == [
        "tiny: engine gauges not refreshed: RuntimeError: engine process gone",
        "tiny: engine gauges not refreshed: KeyError: 'kv_cache_usage'",
    ]


class _Handle:
    def __init__(self, ref: str):
        self.replicas = types.SimpleNamespace(remote=lambda: ref)


def test_a_node_whose_replica_records_do_not_come_is_named_with_the_reason(monkeypatch, caplog):
    answers = {"ref-ok": [{"model": "m", "replica_id": "r1"}], "ref-dead": RuntimeError("actor died")}
    fake_ray = types.SimpleNamespace(
        wait=lambda refs, num_returns, timeout: ([r for r in refs if r in answers], [r for r in refs if r not in answers]),
        get=lambda ref: (_ for _ in ()).throw(answers[ref]) if isinstance(answers[ref], Exception) else answers[ref],
    )
    monkeypatch.setattr(HardwareSupervisor, "_run", lambda self: None)  # no reconcile thread
    supervisor = HardwareSupervisor()
    supervisor._actors = {"aaaaaaaa-ok": _Handle("ref-ok"), "bbbbbbbb-dead": _Handle("ref-dead"),
                          "cccccccc-slow": _Handle("ref-slow")}
    monkeypatch.setitem(sys.modules, "ray", fake_ray)
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        records = supervisor.replicas()
        supervisor.replicas()  # /status asks again: nothing new to say
    assert records == [{"model": "m", "replica_id": "r1"}]
    assert sorted(_warnings(caplog)) == [
        "no replica records from node bbbbbbbb: RuntimeError: actor died",
        "no replica records from node cccccccc: no answer within 2s",
    ]


@pytest.mark.parametrize("size", [0.25, 1.5, 0])
def test_a_kv_cache_size_the_engine_cannot_take_is_refused_naming_the_field(size):
    with pytest.raises(ValidationError) as error:
        ModelAppArgs(source="/m", task="text-generation", kv_cache_gb=size)
    assert error.value.errors()[0]["loc"] == ("kv_cache_gb",)


def test_a_whole_kv_cache_size_is_kept_as_given():
    assert ModelAppArgs(source="/m", task="text-generation", kv_cache_gb=3).kv_cache_gb == 3
    assert ModelAppArgs(source="/m", task="text-generation", kv_cache_gb=2.0).kv_cache_gb == 2


def test_a_fractional_kv_cache_size_fails_the_deploy_naming_the_model_and_the_field(tmp_path):
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    (generation,) = [app for app in config["applications"] if "kv_cache_gb" in (app.get("args") or {})]
    generation["args"]["kv_cache_gb"] = 0.25
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(DeployConfigError) as error:
        plan_deploy(path, EnvOverrides())
    assert "kv_cache_gb" in str(error.value) and generation["name"] in str(error.value)
    assert "fractional" in str(error.value)
