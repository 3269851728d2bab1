"""Application builders named by serve_config.yaml (`import_path`).

Ray validates each application's `args` into the pydantic model annotated on the builder,
so a typo in serve_config.yaml fails the deploy naming the field (a model's task and its
task's fields included, see contract/tasks.py). HF_SERVER_* overrides are applied here, where
the application is built.

No `from __future__ import annotations` here: Ray inspects the annotation at runtime and
needs the class, not a string.
"""

from ray.serve import Application

from contract.config import IngressArgs, ModelAppArgs, read_env
from deployments.server import model_server_deployment

from .ingress import Ingress


def build_ingress_app(args: IngressArgs) -> Application:
    args = args.with_env(read_env())
    # HF_SERVER_WORKERS sets the replica count unless serve_config.yaml pins num_replicas
    # (or autoscaling) for the Ingress deployment itself; config-file options win in Ray.
    deployment = Ingress.options(num_replicas=args.workers) if args.workers else Ingress
    return deployment.bind(args)


def build_model_app(args: ModelAppArgs) -> Application:
    return model_server_deployment().bind(args.with_env(read_env()))
