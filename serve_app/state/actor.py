"""The cluster's one state actor: StateCore with the run-time models' reconciler thread, named,
detached and restarted forever."""

from __future__ import annotations

import time
from collections.abc import Callable

from serve_app.model_apps import build_runtime_model_app
from serve_app.state.core import StateCore, StateSettings
from serve_app.state.lifecycle.reconciler import RayServeApps, Reconciler

STATE_ACTOR_NAME = "hfserve_state"
STATE_NAMESPACE = "hfserve"


class StateActor(StateCore):
    """StateCore with the run-time models' reconciler thread (lifecycle/reconciler.py): what
    runs in the cluster's one state actor."""

    def __init__(self, settings: StateSettings, clock: Callable[[], float] = time.monotonic):
        super().__init__(settings, clock)
        self.reconciler = Reconciler(lambda: self.models, RayServeApps(build_runtime_model_app))
        self.reconciler.start()

    def _nudge(self) -> None:
        self.reconciler.nudge()


def get_or_create_actor(settings: StateSettings):
    """The one state actor of the cluster: named, detached, restarted forever, on the head
    node (where the state directory with the SQLite key store lives). An actor that already
    runs (it outlives deploys) is given these settings: a redeploy's changes take effect."""
    import ray

    actor_class = ray.remote(StateActor)
    handle = actor_class.options(
        name=STATE_ACTOR_NAME,
        namespace=STATE_NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
        max_task_retries=0,
        num_cpus=0,
        resources={"node:__internal_head__": 0.001},
    ).remote(settings)
    # An actor that already ran gets these settings from the ingress's first sync (gateway/).
    return handle
