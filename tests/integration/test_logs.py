"""Replica logs an operator can read: a client error raised in a model replica is one WARNING
line without a traceback, and the request id the client got in `x-request-id` ties the
ingress's and the replica's lines for that request together."""

from __future__ import annotations

import time
from pathlib import Path

import ray


def _serve_logs() -> Path:
    return Path(ray._private.worker.global_worker.node.get_session_dir_path()) / "logs" / "serve"


def _lines_with(text: str, pattern: str, timeout_s: float = 10.0) -> dict[str, list[str]]:
    """Every Serve log line containing `text`, by file name prefix (replica_<app>_...)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found: dict[str, list[str]] = {}
        for path in _serve_logs().glob(pattern):
            for line in path.read_text(errors="replace").splitlines():
                if text in line:
                    found.setdefault(path.name, []).append(line)
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_a_client_error_in_a_replica_is_one_warning_tied_to_the_request(server):
    with server.http() as http:
        response = http.post("/v1/completions", json={"model": "tiny-llama", "prompt": [1, 2, 999999]})
    assert response.status_code == 400  # raised by the model replica (the vocabulary check)
    request_id = response.headers["x-request-id"]
    replica = _lines_with(request_id, "replica_tiny-llama_*.log")
    lines = [line for lines in replica.values() for line in lines]
    assert any("WARNING" in line and "Request refused: 400" in line and "outside the vocabulary" in line for line in lines), lines
    assert not any("Traceback" in line or '"ERROR"' in line or " ERROR " in line for line in lines), lines
    ingress = [line for lines in _lines_with(request_id, "replica_ingress_*.log").values() for line in lines]
    assert any("POST /v1/completions 400" in line for line in ingress), ingress  # the ingress's access line
