"""`hfserve serve` killed with SIGKILL (as the kernel's OOM killer would kill it) and started
again: the new server comes up on the same port, no key is lost, a model loaded at run time
comes back, and the key store passes SQLite's integrity check."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import yaml

from serve_app.cli import haproxy as haproxy_mode
from tests.conftest import ROOT, free_port
from tests.e2e.test_default_config import _session_processes
from tests.tiny_models import build_tiny_bert


def _config(path: Path, model_dir: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": 8000},
        "applications": [
            {"name": "ingress", "route_prefix": "/", "import_path": "serve_app.app:build_ingress_app", "args": {},
             "deployments": [{"name": "Ingress", "ray_actor_options": {"num_cpus": 0.1}}]},
            {"name": "tiny-bert", "route_prefix": None, "import_path": "serve_app.app:build_model_app",
             "args": {"source": str(model_dir), "task": "embedding", "backend": "transformers", "num_cpus": 0.2}},
        ],
    }))
    return path


def _core_processes(sid: int) -> list[str]:
    """The session's processes other than Ray's per-node agents."""
    return [line for line in _session_processes(sid) if "DashboardAgent" not in line and "RuntimeEnvAgent" not in line]


def _ray_processes(sid: int) -> list[str]:
    """Those of them that are not Ray's HAProxy."""
    return [line for line in _core_processes(sid) if "haproxy" not in line]


def _start(config: Path, env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "serve_app.cli", "serve", "--config", str(config)], cwd=ROOT, env=env,
                            stdout=open(log, "a"), stderr=subprocess.STDOUT, start_new_session=True)


def _wait_ready(base: str, process: subprocess.Popen, log: Path, timeout_s: float = 180) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        assert process.poll() is None, log.read_text()[-4000:]
        try:
            if httpx.get(f"{base}/ready", timeout=5).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(log.read_text()[-4000:])


def _wait_embeds(http: httpx.Client, model: str, headers: dict, timeout_s: float = 120) -> None:
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        last = http.post("/v1/embeddings", json={"model": model, "input": "hello"}, headers=headers)
        if last.status_code == 200:
            return
        time.sleep(0.5)
    raise AssertionError(f"{model} does not serve: {last.status_code if last else None} {last.text if last else ''}")


def test_sigkill_then_restart_keeps_every_key(tmp_path):
    config = _config(tmp_path / "serve_config.yaml", build_tiny_bert(tmp_path / "tiny-bert"))
    state_dir, log = tmp_path / "state", tmp_path / "hfserve.log"
    port = free_port()
    env = {**os.environ, "HF_SERVER_PORT": str(port), "HF_SERVER_DASHBOARD_PORT": str(free_port()),
           "HF_SERVER_STATE_DIR": str(state_dir), "HF_SERVER_CACHE_DIR": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    base = f"http://127.0.0.1:{port}"
    first = _start(config, env, log)
    second = None
    try:
        _wait_ready(base, first, log)
        admin = {"Authorization": f"Bearer {(state_dir / 'admin.key').read_text().strip()}"}
        with httpx.Client(base_url=base, timeout=30) as http:
            created = [http.post("/admin/keys", json={"name": f"k{i}"}, headers=admin).json() for i in range(5)]
            loaded = http.post("/models/load", headers=admin, json={
                "model": "tiny-bert-runtime", "source": str(tmp_path / "tiny-bert"), "backend": "transformers",
                "options": {"num_cpus": 0.1}})
            assert loaded.status_code == 202, loaded.text
            _wait_embeds(http, "tiny-bert-runtime", admin)
            for key in created:  # usage writes in flight when the kill lands
                http.post("/v1/embeddings", json={"model": "tiny-bert", "input": "hello"},
                          headers={"Authorization": f"Bearer {key['key']}"})
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        killed = time.monotonic()
        # Ray's processes share the launcher's fate; its two node agents linger until they notice
        # that their raylet is gone (about a minute), and Ray's HAProxy (HAProxy mode, the default)
        # is re-parented to init and stays, holding the HTTP port: the next start stops it.
        deadline = time.monotonic() + 30
        while _ray_processes(first.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _ray_processes(first.pid), _session_processes(first.pid)
        orphans = [line.split()[0] for line in _core_processes(first.pid) if "haproxy" in line]
        # The directories of the HAProxy files Ray wrote for the killed server's node.
        orphan_dirs = set().union(*(haproxy_mode.node_dirs(psutil.Process(int(pid)).cmdline()) for pid in orphans))
        second = _start(config, env, log)
        took = _wait_ready(base, second, log)
        for pid in orphans:
            assert f"stopping HAProxy pid {pid}, left behind by a server that was killed" in log.read_text()
        assert not [path for path in orphan_dirs if path.exists()]  # its files went with it
        with httpx.Client(base_url=base, timeout=30) as http:
            listed = {k["id"]: k for k in http.get("/admin/keys", headers=admin).json()["data"]}
            for key in created:
                assert key["id"] in listed and listed[key["id"]]["revoked_at"] is None
                response = http.post("/v1/embeddings", json={"model": "tiny-bert", "input": "again"},
                                     headers={"Authorization": f"Bearer {key['key']}"})
                assert response.status_code == 200, response.text
            # The run-time model comes back with the new cluster (its record is in the state store).
            _wait_embeds(http, "tiny-bert-runtime", admin)
            card = {c["id"]: c for c in http.get("/v1/models", headers=admin).json()["data"]}["tiny-bert-runtime"]
            assert card["loaded_at_runtime"] and card["task"] == "embedding"
        with sqlite3.connect(f"file:{state_dir / 'keys.db'}?mode=ro", uri=True) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        while _session_processes(first.pid) and time.monotonic() - killed < 120:
            time.sleep(1)
        assert not _session_processes(first.pid), _session_processes(first.pid)
        print(f"\nFAULT hfserve serve SIGKILL: restarted and ready in {took:.1f}s; 5 of 5 keys kept; {len(orphans)} "
              f"orphaned HAProxy stopped by the restart; the last Ray process of the killed one gone "
              f"{time.monotonic() - killed:.0f}s after the kill")
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
        for process in (first, second):
            if process is not None:
                for line in _session_processes(process.pid):
                    os.kill(int(line.split()[0]), signal.SIGKILL)
