"""Per-node hardware actors: a `NodeHardware` on every alive node, kept in step with the node table
by one `HardwareSupervisor` on the head node (every RECONCILE_PERIOD_S: joins get one, leavers go).

NodeHardware is pinned to its node, reserves no CPU and detects in a child process (the probe
imports torch and OpenVINO); it also keeps the records its node's model replicas report, which is
how /status lists every replica. Both are named, detached and restarted by Ray; the application
builders start them (`ensure_supervisor()`), under `hfserve serve` and `serve deploy` alike.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any

from observability import catalogue
from observability.log_once import DistinctWarnings
from observability.recorder import Recorder, gauge_refresh_s

from . import utilization
from .report import NodeReport
from .utilization import open_nvml

logger = logging.getLogger("ray.serve")

NAMESPACE = "hfserve"
SUPERVISOR_NAME = "hfserve_hardware"
NODE_ACTOR_PREFIX = "hfserve_node_"
RECONCILE_PERIOD_S = 5.0  # a node that joins has its actor within this plus the actor's start
MEMORY_MAX_AGE_S = 5.0  # a report's free memory is re-read (cheaply) when older than this
REPLICA_RECORD_TTL_S = 20.0  # replicas refresh theirs on every health check (5 s)
PROBE_TIMEOUT_S = 120.0
UTILIZATION_PERIOD_S = 5.0
REPLICAS_TIMEOUT_S = 2.0  # /status waits this long for each node's replica records

# Ray hides the GPUs of an actor that reserves none by setting CUDA_VISIBLE_DEVICES (and the
# ROCm equivalents) to nothing. The probe reserves none but must see them all.
_SEE_EVERY_DEVICE = {
    "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1",
    "RAY_EXPERIMENTAL_NOSET_ROCR_VISIBLE_DEVICES": "1",
    "RAY_EXPERIMENTAL_NOSET_HIP_VISIBLE_DEVICES": "1",
}


def node_actor_name(node_id: str) -> str:
    return NODE_ACTOR_PREFIX + node_id


def detect_in_child(node_id: str | None, node_ip: str | None) -> NodeReport:
    """detect() in a fresh interpreter; in this process if that fails (and the log says why)."""
    from .detect import detect

    code = "import sys; from hardware.detect import detect; print(detect(sys.argv[1] or None, sys.argv[2] or None).model_dump_json())"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, node_id or "", node_ip or ""],
            capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, env=env, check=True,
        )
        return NodeReport.model_validate_json(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        logger.warning("hardware probe in a child process failed (%s); detecting in-process", exc)
        return detect(node_id, node_ip)


class NodeHardware:
    """The hardware of the node it runs on, and the model replicas there."""

    def __init__(self) -> None:
        import ray

        context = ray.get_runtime_context()
        self.node_id = context.get_node_id()
        self.node_ip = ray.util.get_node_ip_address()
        self._report: NodeReport | None = None
        self._memory_at = 0.0
        self._nvml = open_nvml()
        self._lock = threading.Lock()
        self._replicas: dict[str, tuple[float, dict[str, Any]]] = {}
        threading.Thread(target=self._sample_utilization, name="hardware-utilization", daemon=True).start()

    def _sample_utilization(self) -> None:
        """hf_server_hardware_utilization for this node's devices, every few seconds (often
        enough that Ray does not evict the gauges between samples)."""
        import psutil

        metrics, period_s = Recorder(), gauge_refresh_s(UTILIZATION_PERIOD_S)
        while True:
            try:
                for device, resource, value in utilization.sample(psutil, self._nvml):
                    metrics.set(catalogue.HARDWARE_UTILIZATION, value, node=self.node_ip, device=device, resource=resource)
            except Exception:  # noqa: BLE001 - keep sampling; a broken sample is logged once per period
                logger.exception("hardware utilisation sample failed")
            time.sleep(period_s)

    def report(self, max_age_s: float = MEMORY_MAX_AGE_S) -> dict[str, Any]:
        """The node's report: detected once, its free memory re-read when older than max_age_s.
        (The supervisor asks every 5 s; detecting again each time, or even each minute, would
        cost the node seconds of CPU each time.)"""
        import psutil

        with self._lock:
            if self._report is None:
                self._report = detect_in_child(self.node_id, self.node_ip)
                self._memory_at = time.time()
            elif time.time() - self._memory_at > max_age_s:
                self._report = utilization.with_current_memory(self._report, psutil, self._nvml)
                self._memory_at = time.time()
            return self._report.model_dump()

    def put_replica(self, replica_id: str, record: dict[str, Any]) -> None:
        self._replicas[replica_id] = (time.monotonic(), record)

    def drop_replica(self, replica_id: str) -> None:
        self._replicas.pop(replica_id, None)

    def replicas(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        for replica_id in [r for r, (at, _) in self._replicas.items() if now - at > REPLICA_RECORD_TTL_S]:
            del self._replicas[replica_id]  # a replica that died without saying so
        return [record for _, record in self._replicas.values()]


class HardwareSupervisor:
    """One NodeHardware per alive node, and their reports."""

    def __init__(self, period_s: float = RECONCILE_PERIOD_S) -> None:
        self._period_s = period_s
        self._lock = threading.Lock()
        self._actors: dict[str, Any] = {}  # node id -> NodeHardware handle
        self._reports: dict[str, dict[str, Any]] = {}
        self._started = time.time()
        self._problems = DistinctWarnings(logger)
        threading.Thread(target=self._run, name="hardware-reconcile", daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                self.reconcile()
            except Exception:  # noqa: BLE001 - keep watching; the next round retries
                logger.exception("hardware reconcile failed")
            time.sleep(self._period_s)

    def reconcile(self, timeout_s: float = 30.0) -> list[str]:
        """Start actors on new nodes, drop those of dead ones, refresh reports. Returns the
        alive node ids."""
        import ray

        alive = {node["NodeID"]: node for node in ray.nodes() if node.get("Alive")}
        with self._lock:
            for node_id in [n for n in self._actors if n not in alive]:
                handle = self._actors.pop(node_id)
                self._reports.pop(node_id, None)
                logger.info("node %s left: dropped its hardware actor", node_id[:8])
                try:
                    ray.kill(handle)  # frees the name; the actor died with its node anyway
                except Exception:  # noqa: BLE001
                    pass
            for node_id in alive:
                if node_id not in self._actors:
                    self._actors[node_id] = _start_node_actor(node_id)
            pending = {node_id: handle.report.remote() for node_id, handle in self._actors.items()}
        ready, _ = ray.wait(list(pending.values()), num_returns=len(pending), timeout=timeout_s)
        done = set(ready)
        for node_id, ref in pending.items():
            if ref not in done:  # its last report (if any) stays
                self._problems.warn("no hardware report from node %s within %gs", node_id[:8], timeout_s)
                continue
            try:
                report = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - a node dying now; the next round drops it
                self._problems.warn("no hardware report from node %s: %s", node_id[:8], exc)
                continue
            with self._lock:
                if node_id in self._actors:
                    self._reports[node_id] = report
        return list(alive)

    def reports(self, fresh: bool = False) -> list[dict[str, Any]]:
        """Every alive node's report; fresh=True reconciles first (a deploy wants every node)."""
        if fresh:
            self.reconcile()
        with self._lock:
            return [self._reports[n] for n in self._actors if n in self._reports]

    def replicas(self) -> list[dict[str, Any]]:
        """Every node's replica records; a node that fails or is slow to answer is left out, and
        the log says which and why (once per distinct reason: /status asks often)."""
        import ray

        with self._lock:
            handles = dict(self._actors)
        refs = {node_id: handle.replicas.remote() for node_id, handle in handles.items()}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=REPLICAS_TIMEOUT_S)
        done = set(ready)
        records: list[dict[str, Any]] = []
        for node_id, ref in refs.items():
            if ref not in done:
                self._problems.warn("no replica records from node %s: no answer within %gs", node_id[:8],
                                    REPLICAS_TIMEOUT_S)
                continue
            try:
                records.extend(ray.get(ref))
            except Exception as exc:  # noqa: BLE001 - a node going away: /status lists the others
                self._problems.warn("no replica records from node %s: %s: %s", node_id[:8], type(exc).__name__, exc)
        return records


def _detached(cls: type, name: str, **options: Any):
    """A named, detached actor that Ray restarts, reserving no CPU; the existing one if it runs."""
    import ray

    return ray.remote(cls).options(
        name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, num_cpus=0, max_restarts=-1, **options
    ).remote()


def _start_node_actor(node_id: str):
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return _detached(
        NodeHardware, node_actor_name(node_id), max_concurrency=4,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        runtime_env={"env_vars": _SEE_EVERY_DEVICE},
    )


def ensure_supervisor():
    """The supervisor of the cluster (started if missing): detached, on the head node."""
    return _detached(HardwareSupervisor, SUPERVISOR_NAME, max_concurrency=8,
                     resources={"node:__internal_head__": 0.001})


def cluster_reports(timeout_s: float = 60.0) -> list[NodeReport]:
    """Every alive node's report, from a reconcile done now (for deploy-time placement)."""
    import ray

    reports = ray.get(ensure_supervisor().reports.remote(fresh=True), timeout=timeout_s)
    return [NodeReport.model_validate(r) for r in reports]


def node_actor(node_id: str):
    """This node's NodeHardware actor, or None if it has none (yet)."""
    import ray

    try:
        return ray.get_actor(node_actor_name(node_id), namespace=NAMESPACE)
    except ValueError:
        return None
