"""The `ray_actor_options` a model's `deployments` entry sets in the config Serve is building it
from. Ray passes a builder only its args and applies the deployments entry after the builder
returns, so the builder reads the entry from the controller's copy of the deployed config.
"""

from __future__ import annotations

from typing import Any

from contract.config import MODEL_DEPLOYMENT_NAME, ModelAppArgs

CONFIG_TIMEOUT_S = 30.0
MODEL_IMPORT_PATH = "serve_app.app:build_model_app"  # the builder a config names for a model


def model_actor_options(app_config: dict[str, Any] | None) -> dict[str, Any] | None:
    """The model deployment's `ray_actor_options` in one application's config (as deployed, unset
    fields left out); None when it sets none (an empty block is a block: it replaces too)."""
    for deployment in (app_config or {}).get("deployments") or []:
        if deployment.get("name") == MODEL_DEPLOYMENT_NAME and deployment.get("ray_actor_options") is not None:
            return dict(deployment["ray_actor_options"])
    return None


def deployed_model_configs() -> dict[str, Any]:
    """The model applications of the config Serve deployed, by name (Serve's
    ServeApplicationSchema each); empty outside a config deploy (serve.run, a run-time load)."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:  # no Serve controller: not a config deploy
        return {}
    configs = ray.get(controller.get_app_configs.remote(), timeout=CONFIG_TIMEOUT_S)
    return {name: config for name, config in configs.items() if config.import_path == MODEL_IMPORT_PATH}


def deployed_model_args() -> dict[str, dict[str, Any]]:
    """Each config-file model's args as deployed (what the ingress reads a model's fallbacks from
    before its first replica answers)."""
    return {name: dict(config.args or {}) for name, config in deployed_model_configs().items()}


def deployed_actor_options(args: ModelAppArgs, configs: dict[str, Any] | None = None,
                           ) -> list[tuple[str, dict[str, Any] | None]]:
    """(name, the model deployment's `ray_actor_options`) of each deployed application whose args
    are `args`: the one being built (Serve stores the config before it starts the build), and
    any other deployed with the very same args. Empty outside a config deploy (serve.run, a
    run-time load), where nothing can replace the options. `configs`: deployed_model_configs()."""
    found = []
    for name, config in (deployed_model_configs() if configs is None else configs).items():
        try:
            same = ModelAppArgs.model_validate(config.args or {}) == args
        except ValueError:  # another application's bad args are its own build's error
            continue
        if same:
            found.append((name, model_actor_options(config.model_dump(exclude_unset=True))))
    return found
