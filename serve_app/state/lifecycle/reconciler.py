"""Makes Serve's applications match the run-time model records, from one thread in the state
actor (one per cluster, so two ingress replicas never deploy the same model twice).

Each pass deploys a record that has no application; marks it `ready` when Serve reports it
RUNNING, `pending` while its replica waits for resources no node has free, and `failed` (deleting
the application, so nothing keeps retrying) when Serve reports DEPLOY_FAILED or the load outlives
its load_timeout_s; deletes an `unloading` record's application once the ingress replicas have
stopped routing to it, then the record; and drops a record whose name serve_config.yaml now
defines. A failure has two texts: the detail (admins) and a short public reason.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from contract.config import ModelAppArgs
from contract.lifecycle import RuntimeModel
from serve_app.state.lifecycle.resources import describe, replica_needs, short_of
from serve_app.state.lifecycle.store import RuntimeModelStore

logger = logging.getLogger("ray.serve")

PASS_PERIOD_S = 2.0  # between passes while nothing changes (a load or unload wakes it at once)
# How long an unloading model keeps its application before it is deleted: the ingress replicas
# sync the records at least once a second, so by then none routes a new request to it.
DRAIN_START_S = 1.5
ERROR_LINE = r"^[\w.]+(Error|Exception|Exit)\b.*:"
# A replica Ray has not placed for this long, while no node has its resources free, is pending
# (placing one that fits takes well under a second; starting its worker a few).
PENDING_AFTER_S = 3.0
FAILED_TO_LOAD = "its replica failed while loading the model"
NOT_DEPLOYED = "it could not be deployed on this cluster"


@dataclass(frozen=True)
class ServeApp:
    name: str
    status: str  # Serve's ApplicationStatus value
    message: str
    declarative: bool  # deployed by serve_config.yaml (serve deploy), not by the Serve API


class ServeApps(Protocol):
    def list(self) -> dict[str, ServeApp]: ...

    def deploy(self, record: RuntimeModel) -> None: ...

    def delete(self, name: str) -> None: ...

    def unplaced(self, names: set[str]) -> set[str]:
        """Those of `names` with a replica Ray has not placed on a node yet."""
        ...

    def free_per_node(self) -> list[dict[str, float]]: ...


class Reconciler:
    def __init__(self, store: Callable[[], RuntimeModelStore], serve_apps: ServeApps, *,
                 clock: Callable[[], float] = time.time, period_s: float = PASS_PERIOD_S):
        self._store = store  # a getter: a redeploy with another state_dir opens another store
        self.serve_apps = serve_apps
        self._clock = clock
        self._period_s = period_s
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._unplaced_since: dict[str, float] = {}

    @property
    def store(self) -> RuntimeModelStore:
        return self._store()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hfserve-model-reconciler", daemon=True)
        self._thread.start()

    def nudge(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while True:  # a daemon thread: it ends with the state actor's process
            try:
                busy = self.reconcile()
            except Exception:  # noqa: BLE001 - Serve restarting; the next pass retries
                logger.exception("run-time models: reconcile pass failed")
                busy = False
            self._wake.wait(0.5 if busy else self._period_s)
            self._wake.clear()

    def reconcile(self) -> bool:
        """One pass. Returns whether something is in motion (look again soon)."""
        records = self.store.all()
        if not records:
            return False
        apps = self.serve_apps.list()
        self._note_unplaced({r.model for r in records if r.state in ("loading", "pending") and r.model in apps})
        moving = False
        for record in records:
            moving |= self._reconcile_one(record, apps.get(record.model))
        return moving

    def _note_unplaced(self, loading: set[str]) -> None:
        unplaced = self.serve_apps.unplaced(loading) if loading else set()
        now = self._clock()
        self._unplaced_since = {name: self._unplaced_since.get(name, now) for name in unplaced}

    def _reconcile_one(self, record: RuntimeModel, app: ServeApp | None) -> bool:
        name = record.model
        if app is not None and app.declarative:
            logger.warning("run-time model %s: serve_config.yaml now defines a model of that name; "
                           "the config's wins and the run-time record is dropped", name)
            self.store.delete(name)
            return False
        if record.state == "unloading":
            if app is None:
                self.store.delete(name)
                logger.info("run-time model %s: unloaded", name)
                return False
            if app.status != "DELETING" and self._clock() - (record.unloading_since or 0) >= DRAIN_START_S:
                self.serve_apps.delete(name)
            return True
        if record.state == "failed":
            if app is not None and app.status != "DELETING":
                self.serve_apps.delete(name)
            return False
        if app is None:
            if record.state == "ready":  # a new cluster (or its app was deleted behind our back): load again
                self._update(name, state="loading", requested_at=self._clock(), ready_at=None)
                logger.info("run-time model %s: not in Serve; loading it again", name)
            self._deploy(record)
            return True
        if app.status == "RUNNING":
            if record.state != "ready":
                self._update(name, state="ready", ready_at=self._clock(), error=None, reason=None)
                logger.info("run-time model %s: ready", name)
            return False
        if app.status == "DEPLOY_FAILED":
            self._fail(record, failure_summary(app.message), FAILED_TO_LOAD)
            logger.warning("run-time model %s: failed: %s", name, app.message)
            return False
        if self._timed_out(record):
            return False
        self._note_pending(record)
        return True  # DEPLOYING, UNHEALTHY (Serve replaces the replica), DELETING

    def _timed_out(self, record: RuntimeModel) -> bool:
        if record.load_timeout_s is None or self._clock() - record.requested_at < record.load_timeout_s:
            return False
        waited = f"not ready within {record.load_timeout_s:g}s (model_load_timeout_s)"
        why = "; it was waiting for resources" if record.state == "pending" else ""
        self._fail(record, waited + (f": {record.error}" if record.error else ""), waited + why)
        logger.warning("run-time model %s: %s", record.model, waited)
        return True

    def _note_pending(self, record: RuntimeModel) -> None:
        since = self._unplaced_since.get(record.model)
        needs = replica_needs(ModelAppArgs.model_validate(record.args))
        lacking = short_of(needs, self.serve_apps.free_per_node()) if since is not None else {}
        if since is not None and lacking and self._clock() - since >= PENDING_AFTER_S:
            reason = f"waiting for resources: each replica needs {describe(needs)}, which no node has free"
            detail = f"{reason} (the most free on one node: {describe(lacking)})"
            if record.state != "pending" or record.error != detail:
                self._update(record.model, state="pending", reason=reason, error=detail)
                logger.info("run-time model %s: %s", record.model, detail)
        elif record.state == "pending":  # placed now: it starts
            self._update(record.model, state="loading", reason=None, error=None)

    def _fail(self, record: RuntimeModel, error: str, reason: str) -> None:
        self._update(record.model, state="failed", error=error, reason=reason)
        self.serve_apps.delete(record.model)

    def _deploy(self, record: RuntimeModel) -> None:
        try:
            self.serve_apps.deploy(record)
            logger.info("run-time model %s: deploying from %s", record.model, record.args.get("source"))
        except Exception as exc:  # noqa: BLE001 - a build error (no node has the hardware, ...) is the answer
            message = f"{type(exc).__name__}: {exc}"
            logger.warning("run-time model %s: could not be deployed: %s", record.model, message)
            self._update(record.model, state="failed", error=message, reason=NOT_DEPLOYED)

    def _update(self, name: str, **changes: Any) -> None:
        current = self.store.get(name)
        if current is not None and current.state != "unloading":  # an unload since this pass began wins
            self.store.put(current.model_copy(update=changes))


def failure_summary(message: str) -> str:
    """The line of Serve's DEPLOY_FAILED message that says why (a traceback's last line, e.g.
    "SourceError: local model path '/x' does not exist"), not the whole traceback."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(ERROR_LINE, line):
            return line[:2000]
    return (lines[-1] if lines else "the deployment failed")[:2000]


class RayServeApps:
    """ServeApps over the Serve API of the cluster this process is connected to; `build` makes
    a run-time model's application (serve_app/model_apps.py)."""

    def __init__(self, build: Callable[[RuntimeModel], Any]):
        self._build = build

    def list(self) -> dict[str, ServeApp]:
        from ray.serve.context import _get_global_client

        client = _get_global_client(raise_if_no_controller_running=False)
        if client is None:
            return {}
        details = client.get_serve_details()
        apps: dict[str, ServeApp] = {}
        for name, app in (details.get("applications") or {}).items():
            status = app.get("status")
            # A replica that failed to start explains itself on its deployment, not the app.
            messages = [app.get("message") or ""] + [d.get("message") or "" for d in (app.get("deployments") or {}).values()]
            apps[name] = ServeApp(name, getattr(status, "value", status) or "", "\n".join(m for m in messages if m),
                                  str(getattr(app.get("source"), "value", app.get("source"))) == "declarative")
        return apps

    def deploy(self, record: RuntimeModel) -> None:
        from ray import serve

        # Returns once the controller has the application: its replicas start while the next
        # passes watch (a slow load must not hold up the other models' loads and unloads).
        target = serve.RunTarget(self._build(record), name=record.model, route_prefix=None,
                                 logging_config=self._logging_config())
        serve.run_many([target], wait_for_ingress_deployment_creation=False, wait_for_applications_running=False)

    def delete(self, name: str) -> None:
        from ray import serve

        serve.delete(name, _blocking=False)

    def unplaced(self, names: set[str]) -> set[str]:
        # Serve names a replica's actor SERVE_REPLICA::<app>#<deployment>#<id>; the GCS keeps it
        # PENDING_CREATION until a node with its resources takes it.
        from ray._private.state import actors

        pending = actors(actor_state_name="PENDING_CREATION").values()
        apps = {str(actor.get("Name", "")).removeprefix("SERVE_REPLICA::").partition("#")[0] for actor in pending
                if str(actor.get("Name", "")).startswith("SERVE_REPLICA::")}
        return apps & names

    def free_per_node(self) -> list[dict[str, float]]:
        from ray._private.state import available_resources_per_node

        return list(available_resources_per_node().values())

    @staticmethod
    def _logging_config() -> dict[str, Any] | None:
        """The config-file models' logging (JSON lines, level), so run-time models log alike."""
        from ray.serve.context import _get_global_client

        client = _get_global_client(raise_if_no_controller_running=False)
        details = client.get_serve_details() if client is not None else {}
        for app in (details.get("applications") or {}).values():
            config = app.get("deployed_app_config") or {}
            logging_config = config.get("logging_config") if isinstance(config, dict) else None
            if logging_config:
                return logging_config
        return None
