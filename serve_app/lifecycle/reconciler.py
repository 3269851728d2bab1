"""Makes Serve's applications match the run-time model records, from one thread in the state
actor (one per cluster, so two ingress replicas never deploy the same model twice).

Each pass compares the records (the desired state) with Serve's applications:
- a record with no application is deployed (`serve.run` of the model's application, not
  waiting for it to be ready): a load, or a model coming back after a cluster restart;
- an application that is RUNNING makes its record `ready` (with the time it took);
- one that is DEPLOY_FAILED makes it `failed` with Serve's message, and is deleted, so a
  replica that cannot start does not keep retrying and holding its resources;
- an `unloading` record's application is deleted once the ingress replicas have had a sync
  period to stop routing to it (Serve then drains: a replica stops once its in-flight requests
  end, or after graceful_shutdown_timeout_s); when it is gone the record is dropped;
- an application of the same name that serve_config.yaml now defines (Serve reports it
  DECLARATIVE) wins: the run-time record is dropped, with a warning in the log.

`serve deploy` of the YAML deletes only the applications that the YAML deployed before (Ray's
rule for declarative configs), so run-time models survive it.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from contract.lifecycle import RuntimeModel

from .store import RuntimeModelStore

logger = logging.getLogger("ray.serve")

PASS_PERIOD_S = 2.0  # between passes while nothing changes (a load or unload wakes it at once)
# How long an unloading model keeps its application before it is deleted: the ingress replicas
# sync the records at least once a second, so by then none routes a new request to it.
DRAIN_START_S = 1.5
ERROR_LINE = r"^[\w.]+(Error|Exception|Exit)\b.*:"


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


class Reconciler:
    def __init__(self, store: Callable[[], RuntimeModelStore], serve_apps: ServeApps, *,
                 clock: Callable[[], float] = time.time, period_s: float = PASS_PERIOD_S):
        self._store = store  # a getter: a redeploy with another state_dir opens another store
        self.serve_apps = serve_apps
        self._clock = clock
        self._period_s = period_s
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

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
        moving = False
        for record in records:
            moving |= self._reconcile_one(record, apps.get(record.model))
        return moving

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
                self._update(name, state="ready", ready_at=self._clock(), error=None)
                logger.info("run-time model %s: ready", name)
            return False
        if app.status == "DEPLOY_FAILED":
            self._update(name, state="failed", error=failure_summary(app.message))
            logger.warning("run-time model %s: failed: %s", name, app.message)
            self.serve_apps.delete(name)
            return False
        return True  # DEPLOYING, UNHEALTHY (Serve replaces the replica), DELETING

    def _deploy(self, record: RuntimeModel) -> None:
        try:
            self.serve_apps.deploy(record)
            logger.info("run-time model %s: deploying from %s", record.model, record.args.get("source"))
        except Exception as exc:  # noqa: BLE001 - a build error (no node has the hardware, ...) is the answer
            message = f"{type(exc).__name__}: {exc}"
            logger.warning("run-time model %s: could not be deployed: %s", record.model, message)
            self._update(record.model, state="failed", error=message)

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
    """ServeApps over the Serve API of the cluster this process is connected to."""

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

        from ..app import build_runtime_model_app

        # Returns once the controller has the application: its replicas start while the next
        # passes watch (a slow load must not hold up the other models' loads and unloads).
        target = serve.RunTarget(build_runtime_model_app(record), name=record.model, route_prefix=None,
                                 logging_config=self._logging_config())
        serve.run_many([target], wait_for_ingress_deployment_creation=False, wait_for_applications_running=False)

    def delete(self, name: str) -> None:
        from ray import serve

        serve.delete(name, _blocking=False)

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
