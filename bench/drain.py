"""What HAProxy mode's drain period costs: `hfserve serve` with a tiny config, a run-time model
loaded then unloaded (timed), then Ctrl-C (timed to exit), once per drain period.

    flock /tmp/ray-tests.lock .venv/bin/python -m bench.drain [--drain-s 30 default]

`default` is what `hfserve serve` sets (serve_app/cli/haproxy.py: 2 s); a number is passed as
RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S, which the launcher leaves as the operator set it.
Writes bench/results/drain-<date>.json. Used for docs/performance.md ("Drain period").
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from hardware.detect import cpu_info
from serve_app.cli.haproxy import DRAIN_ENV

from .server import free_port

ROOT = Path(__file__).resolve().parent.parent


def _wait(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(what)


def one_run(work: Path, model: Path, drain: str) -> dict:
    from tests.e2e.test_restart import _config

    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "HF_SERVER_PORT": str(port), "HF_SERVER_DASHBOARD_PORT": str(free_port()),
           "HF_SERVER_STATE_DIR": str(work / "state"), "HF_SERVER_CACHE_DIR": str(work / "cache")}
    env.pop(DRAIN_ENV, None)
    if drain != "default":
        env[DRAIN_ENV] = drain
    config = _config(work / "serve_config.yaml", model)
    with open(work / "serve.log", "a") as log:
        server = subprocess.Popen([sys.executable, "-m", "serve_app.cli", "serve", "--config", str(config)], cwd=ROOT,
                                  env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: httpx.get(f"{base}/ready", timeout=5).status_code == 200, 300, "ready")
        admin = {"Authorization": f"Bearer {(work / 'state' / 'admin.key').read_text().strip()}"}
        with httpx.Client(base_url=base, timeout=60, headers=admin) as http:
            loaded = http.post("/models/load", json={"model": "rt", "source": str(model), "backend": "transformers",
                                                     "options": {"num_cpus": 0.1}})
            assert loaded.status_code == 202, loaded.text
            _wait(lambda: http.post("/v1/embeddings", json={"model": "rt", "input": "x"}).status_code == 200, 120, "rt serves")
            started = time.monotonic()
            assert http.post("/models/unload", json={"model": "rt"}).status_code == 202
            _wait(lambda: not any(r["model"] == "rt" for r in http.get("/models").json()["data"]), 120, "rt unloaded")
            unload_s = time.monotonic() - started
        started = time.monotonic()
        os.killpg(server.pid, signal.SIGINT)
        server.wait(timeout=300)
        return {"drain": drain, "unload_s": round(unload_s, 1), "ctrl_c_to_exit_s": round(time.monotonic() - started, 1)}
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)


def main() -> int:
    from tests.tiny_models import build_tiny_bert

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drain-s", nargs="+", default=["30", "default"], help="drain periods to run, or default")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hfserve-drain-"))
    model = build_tiny_bert(work / "tiny-bert")
    runs = []
    for drain in args.drain_s:
        runs.append(one_run(work / f"run-{drain}", model, drain))
        print(json.dumps(runs[-1]), flush=True)
    print(f"\nCPU: {cpu_info().model}\n\n| drain period | unload, s | Ctrl-C to exit, s |\n|---|---|---|")
    for run in runs:
        print(f"| {run['drain']} | {run['unload_s']} | {run['ctrl_c_to_exit_s']} |")
    out = ROOT / "bench" / "results" / f"drain-{datetime.date.today().isoformat()}.json"
    out.write_text(json.dumps({"cpu": cpu_info().model, "cpus": os.cpu_count(), "runs": runs}, indent=2))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
