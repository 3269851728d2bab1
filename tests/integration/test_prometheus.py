"""A real Prometheus scrapes the running server's /metrics with an admin key, as an operator's
would (deploy/prometheus/prometheus.yml), and answers a PromQL query over what it scraped.

The unit tests check the exposition text; this one checks what only a real scraper can: the
bearer-token auth Prometheus sends, a content type and format it accepts, and series that
move between scrapes, end to end through Ray's metrics agents. `prometheus` is the Debian
package's binary (`make test` installs it); without it the test skips (fails under CI=true).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from tests.conftest import PROMETHEUS_INSTALL, free_port, needs_tool

PROMETHEUS = shutil.which("prometheus")
pytestmark = needs_tool(PROMETHEUS, "the `prometheus` binary", PROMETHEUS_INSTALL)

MODEL = "tiny-llama"
MSG = [{"role": "user", "content": "Tell me about Paris."}]
JOB = "hfserve"
# Ray's metrics agents export about every 10 s (RAY_metrics_report_interval_ms) and a rate
# needs two different values inside its window: a few export rounds, with room to spare.
DEADLINE_S = 90
QUERY = "sum by (model) (rate(hf_server_requests_total[1m]))"


def write_prometheus_config(directory: Path, target: str, metrics_path: str, admin_key: str) -> Path:
    """A scrape config like deploy/prometheus/prometheus.yml's hfserve job, scraping often so
    the test waits for Ray's export (about 10 s), not for Prometheus. Every 2 s rather than 1:
    a scrape of /metrics gathers every node's Ray metrics agent, and on a busy test machine
    that can take longer than a 1 s timeout (the timeout cannot exceed the interval). The key
    goes in a credentials file, as an operator should keep it (never in the config itself)."""
    credentials = directory / "hfserve-admin.key"
    credentials.write_text(admin_key)
    credentials.chmod(0o600)
    config = {
        "global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
        "scrape_configs": [
            {
                "job_name": JOB,
                "metrics_path": metrics_path,
                "scrape_interval": "2s",
                "scrape_timeout": "2s",
                "authorization": {"type": "Bearer", "credentials_file": str(credentials)},
                "static_configs": [{"targets": [target]}],
            }
        ],
    }
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Prometheus:
    """One `prometheus` process on a free local port, with its own TSDB and log in `directory`."""

    def __init__(self, config: Path, directory: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = directory / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                PROMETHEUS or "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def wait_ready(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if self.http.get("/-/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready after {timeout_s} s:\n{self.log_tail()}")

    def query(self, expr: str) -> list[dict]:
        response = self.http.get("/api/v1/query", params={"query": expr})
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", body
        return body["data"]["result"]

    def target(self, job: str) -> dict | None:
        active = self.http.get("/api/v1/targets", params={"state": "active"}).json()["data"]["activeTargets"]
        return next((t for t in active if t["labels"].get("job") == job), None)

    def log_tail(self, chars: int = 3000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        self.http.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        self._log.close()


@pytest.fixture
def prometheus(server, tmp_path) -> Iterator[Prometheus]:
    # Scrape the gateway application (keys on), so the admin-only /metrics is what is tested;
    # it lives under the gateway's route prefix.
    gateway = urlsplit(server.gateway_url)
    config = write_prometheus_config(tmp_path, gateway.netloc, gateway.path + "/metrics", server.admin_key())
    instance = Prometheus(config, tmp_path)
    try:
        instance.wait_ready()
        yield instance
    finally:
        instance.stop()  # never leave a prometheus behind, whatever the test did


def test_prometheus_scrapes_request_rates_per_model(server, prometheus):
    headers = {"Authorization": f"Bearer {server.admin_key()}"}
    body = {"model": MODEL, "messages": MSG, "max_tokens": 4, "temperature": 1}
    result: list[dict] = []
    target: dict | None = None
    with httpx.Client(base_url=server.gateway_url, timeout=60, headers=headers) as http:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            # Keep traffic flowing while waiting: a rate needs the counter to move between
            # scrapes, and a series that first appears after the last request never does.
            # temperature 1 keeps the response cache out of the way (it would still count).
            response = http.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            target = prometheus.target(JOB)
            if target is not None and target["health"] == "up":
                result = [
                    sample for sample in prometheus.query(QUERY)
                    if sample["metric"].get("model") == MODEL and float(sample["value"][1]) > 0
                ]
                if result:
                    break
            time.sleep(1)

    assert target is not None, f"prometheus has no {JOB} target:\n{prometheus.log_tail()}"
    assert target["health"] == "up", (
        f"scraping {target['scrapeUrl']} fails: {target['lastError']}\n{prometheus.log_tail()}"
    )
    assert result, (
        f"{QUERY} has no positive value for model={MODEL} after {DEADLINE_S} s: "
        f"{prometheus.query(QUERY)}; raw: {prometheus.query('hf_server_requests_total')}"
    )
