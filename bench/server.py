"""Start and stop `hfserve serve` for a measurement, with an API key of its own."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


PLAIN_PREFIX = "/plain"


def with_plain_ingress(config: Path) -> Path:
    """The config plus a second ingress at /plain with keys, cache and breakers off: the same
    server without the gateway, for measuring the gateway's overhead side by side."""
    import yaml

    data = yaml.safe_load(config.read_text())
    data["applications"].append({
        "name": "ingress-plain",
        "route_prefix": PLAIN_PREFIX,
        "import_path": "serve_app.app:build_ingress_app",
        "args": {"enable_auth": False, "enable_caching": False, "enable_circuit_breaker": False},
        "deployments": [{"name": "Ingress", "ray_actor_options": {"num_cpus": 0.05}}],
    })
    out = Path(tempfile.mkdtemp(prefix="hfserve-bench-config-")) / "serve_config.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


@dataclass
class RunningServer:
    process: subprocess.Popen
    base: str
    ready_s: float
    headers: dict[str, str]  # the bench key's Authorization header
    state_dir: Path  # the key store and admin.key

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {(self.state_dir / 'admin.key').read_text().strip()}"}

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGINT)  # as Ctrl-C in a terminal
        try:
            self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)


def start(config: Path, *, log_name: str = "server.log") -> RunningServer:
    from serve_app.state.keys import KeyStore, NewKey

    state_dir = Path(tempfile.mkdtemp(prefix="hfserve-bench-"))
    store = KeyStore(state_dir / "keys.db")
    key, _ = store.create(NewKey(name="bench", rpm=10_000_000, tpm=10_000_000_000))
    store.close()
    port = free_port()
    env = {
        **os.environ,
        "HF_SERVER_PORT": str(port),
        "HF_SERVER_DASHBOARD_PORT": str(free_port()),
        "HF_SERVER_STATE_DIR": str(state_dir),
        "PYTHONUNBUFFERED": "1",
    }
    log_path = ROOT / "bench" / "results" / log_name
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "serve_app.cli", "serve", "--config", str(config)],
        cwd=ROOT, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited; see {log_path}")
        try:
            if httpx.get(f"{base}/ready", timeout=5).status_code == 200:
                return RunningServer(process, base, time.monotonic() - started, {"Authorization": f"Bearer {key}"}, state_dir)
        except httpx.HTTPError:
            pass
        if time.monotonic() - started > 900:
            process.kill()
            raise RuntimeError(f"server not ready after 900 s; see {log_path}")
        time.sleep(0.5)
