"""The application builders serve_config.yaml names (`import_path`): `build_ingress_app` here,
`build_model_app` from model_apps.py. Ray validates each application's `args` into the pydantic
model annotated on the builder, so a typo fails the deploy naming the field. HF_SERVER_*
overrides are applied where the application is built, inside the cluster, which is also where
the per-node hardware actors start.

No `from __future__ import annotations`: Ray reads the builder's annotation at run time.
"""

from ray.serve import Application

from contract.config import read_env
from contract.ingress_args import IngressArgs
from hardware.probe import ensure_supervisor
from serve_app.ingress.deployment import Ingress
from serve_app.model_apps import build_model_app

__all__ = ["build_ingress_app", "build_model_app"]


def build_ingress_app(args: IngressArgs) -> Application:
    args = args.with_env(read_env())
    ensure_supervisor()
    # HF_SERVER_WORKERS sets the replica count unless serve_config.yaml pins num_replicas
    # (or autoscaling) for the Ingress deployment itself; config-file options win in Ray.
    deployment = Ingress.options(num_replicas=args.workers) if args.workers else Ingress
    return deployment.bind(args)
