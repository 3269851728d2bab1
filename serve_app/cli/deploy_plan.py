"""What `hfserve serve` (and the test harness) deploys: serve_config.yaml read, HF_SERVER_*
overrides applied, and every application's args validated before anything starts, so a typo
fails at once naming the field instead of as a DEPLOY_FAILED status later. A model that omits
its task gets the one its files name, here too (and the plan's config says it), so the models
prepared before deploying are prepared for the task they are deployed with. A model's
`ray_actor_options` that only set num_cpus, num_gpus or resources become its args (they win), so
placement merges them with its own instead of Ray replacing placement's options as a whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from contract.config import (
    MODEL_DEPLOYMENT_NAME,
    EnvOverrides,
    FallbackConfigError,
    ModelAppArgs,
    check_fallbacks,
    valid_model_id,
)
from contract.ingress_args import IngressArgs

# The actor options that are also a model's args: placement's fields.
ARGS_OPTIONS = frozenset({"num_cpus", "num_gpus", "resources"})


class DeployConfigError(ValueError):
    """serve_config.yaml is not something we can deploy; the message names the field."""


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as exc:
        raise DeployConfigError(f"config file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise DeployConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or "applications" not in data:
        raise DeployConfigError(f"{path} must be a Ray Serve config with an 'applications' list")
    return data


def validate_app_args(import_path: str, args: dict[str, Any] | None, app_name: str) -> BaseModel:
    """Validate one application's args with the model its builder takes.

    Ray validates them again when the builder runs on the cluster; doing it here too turns a
    typo into an immediate error at `hfserve serve` instead of a DEPLOY_FAILED status later.
    """
    builders: dict[str, type[BaseModel]] = {
        "serve_app.app:build_ingress_app": IngressArgs,
        "serve_app.app:build_model_app": ModelAppArgs,
    }
    model = builders.get(import_path)
    if model is None:
        raise DeployConfigError(f"application '{app_name}': unknown import_path '{import_path}'")
    if model is ModelAppArgs and not valid_model_id(app_name):
        raise DeployConfigError(
            f"application name '{app_name}' is not a valid model id (letters, digits, . _ : -)"
        )
    try:
        return model.model_validate(args or {})
    except Exception as exc:  # pydantic.ValidationError names every bad field
        raise DeployConfigError(f"application '{app_name}' has invalid args:\n{exc}") from exc


def _with_task(app_name: str, args: ModelAppArgs) -> ModelAppArgs:
    """The model's task, inferred from its files when the args omit it."""
    from deployments.task_inference import with_task

    try:
        return with_task(args)
    except ValueError as exc:  # a source that cannot be read, no task or several claim it
        raise DeployConfigError(f"application '{app_name}': {exc}") from exc


def fold_actor_options(app: dict[str, Any]) -> str | None:
    """Move a model application's `ray_actor_options` into its args when they only set placement's
    fields (each one set wins over the args'), and say so; None when there is nothing to move.
    Any other option (memory, runtime_env, ...) leaves the block to Ray, checked by the builder."""
    for deployment in app.get("deployments") or []:
        options = deployment.get("ray_actor_options")
        if deployment.get("name") != MODEL_DEPLOYMENT_NAME or not options or not set(options) <= ARGS_OPTIONS:
            continue
        app["args"] = {**(app.get("args") or {}), **options}
        del deployment["ray_actor_options"]
        app["deployments"] = [d for d in app["deployments"] if set(d) != {"name"}]
        return (f"application '{app.get('name')}': deployments[].ray_actor_options {options} merged into the "
                "model's args (their values win), so placement keeps its other options")
    return None


@dataclass(frozen=True)
class DeployPlan:
    config: dict[str, Any]  # the Serve config with HF_SERVER_* overrides applied
    models: dict[str, ModelAppArgs]  # model applications by name (= model id)
    ingresses: list[IngressArgs]  # the ingress applications' args, environment applied
    host: str
    port: int
    warnings: tuple[str, ...] = ()  # deployable, but probably not what was meant

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"


def plan_deploy(config_path: Path, env: EnvOverrides) -> DeployPlan:
    """Read serve_config.yaml, apply the environment, validate every application's args."""
    config = load_yaml(config_path)
    http = dict(config.get("http_options") or {})
    if env.host is not None:
        http["host"] = env.host
    if env.port is not None:
        http["port"] = env.port
    http.setdefault("host", "127.0.0.1")
    http.setdefault("port", 8000)
    config["http_options"] = http
    if env.log_level is not None or env.log_format is not None:
        logging_config = dict(config.get("logging_config") or {})
        if env.log_level is not None:
            logging_config["log_level"] = env.log_level
        if env.log_format is not None:
            logging_config["encoding"] = env.log_format.upper()
        config["logging_config"] = logging_config
    models: dict[str, ModelAppArgs] = {}
    ingresses: list[IngressArgs] = []
    notes: list[str] = []
    for app in config.get("applications") or []:
        name = app.get("name")
        if not name:
            raise DeployConfigError("every application needs a name")
        if str(app.get("import_path", "")).endswith(":build_model_app") and (note := fold_actor_options(app)):
            notes.append(note)
        validated = validate_app_args(app.get("import_path", ""), app.get("args"), name)
        if isinstance(validated, ModelAppArgs):
            models[name] = _with_task(name, validated.with_env(env))
            if validated.task is None:  # deploy what was prepared: the inferred task, written out
                app["args"] = {**app["args"], "task": models[name].task}
        elif isinstance(validated, IngressArgs):
            ingresses.append(validated.with_env(env))
    for name, args in models.items():  # before any cluster starts: a fallback of another task or none
        try:
            check_fallbacks(name, args, {other: other_args.task for other, other_args in models.items()})
        except FallbackConfigError as exc:
            raise DeployConfigError(f"application '{name}': {exc}") from None
    # Ray's own schema catches everything else (unknown keys, duplicate routes, ...).
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import ServeDeploySchema

    try:
        ServeDeploySchema.model_validate(config)
    except Exception as exc:
        raise DeployConfigError(f"{config_path} is not a valid Ray Serve config:\n{exc}") from exc
    # Ray accepts unknown autoscaling keys silently; a typo there would quietly mean "no limit".
    for app in config["applications"]:
        for deployment in app.get("deployments") or []:
            unknown = set(deployment.get("autoscaling_config") or {}) - set(AutoscalingConfig.model_fields)
            if unknown:
                raise DeployConfigError(
                    f"application '{app['name']}', deployment '{deployment.get('name')}': unknown "
                    f"autoscaling_config keys {sorted(unknown)}"
                )
    warnings = tuple(notes) + tuple(
        f"application '{app['name']}': deployments[].ray_actor_options replaces, as a whole, the options hfserve "
        "derives from the model's hardware, num_cpus, num_gpus and resources (Ray's rule); the deploy fails "
        "unless it spells out each of them that it changes. Set those in args instead"
        for app in config["applications"]
        if app.get("name") in models
        for deployment in app.get("deployments") or []
        if deployment.get("ray_actor_options") is not None
    )
    return DeployPlan(config=config, models=models, ingresses=ingresses, host=http["host"], port=int(http["port"]),
                      warnings=warnings)
