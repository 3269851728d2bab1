"""Hostile input: clients that abandon non-streaming generations. Each abandoned sequence is
cancelled in its engine at once, as an abandoned stream's is, and the request is recorded as a
499 in the access log and in hf_server_requests_total, never as a 500 (issue #27, item 5)."""

from __future__ import annotations

import json
import socket
import uuid
from pathlib import Path

import httpx
import pytest
import ray
from ray import serve

from tests.integration.conftest import LLAMA_CONTEXT
from tests.integration.hostile import assert_others_served, new_key
from tests.integration.test_metrics import scrape, total
from tests.integration.test_stream_lifecycle import wait_for

LONG = LLAMA_CONTEXT - 40  # tokens (the prompt takes under 40); greedy decoding of the tiny model never stops early
MSG = [{"role": "user", "content": "Tell me everything."}]
CHAT, COMPLETE = "/v1/chat/completions", "/v1/completions"


def _send(server, path: str, body: dict, headers: dict[str, str]) -> socket.socket:
    """A POST to the gateway on a raw connection, left open: the test decides when the client leaves."""
    url = httpx.URL(server.gateway_url + path)
    payload = json.dumps(body).encode()
    head = [f"POST {url.raw_path.decode()} HTTP/1.1", f"Host: {url.host}:{url.port}",
            "Content-Type: application/json", f"Content-Length: {len(payload)}",
            *(f"{name}: {value}" for name, value in headers.items())]
    connection = socket.create_connection((url.host, url.port), timeout=30)
    connection.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
    return connection


def _access_lines(request_id: str) -> list[dict]:
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs" / "serve"
    return [json.loads(line) for file in logs.glob("replica_gateway_Ingress_*.log")
            for line in file.read_text(errors="replace").splitlines() if request_id in line and '"endpoint"' in line]


def _engine(model: str) -> dict:
    """The model replica's engine counters, asked through its handle: a few ms, so the client
    below leaves while the tiny model still has most of its tokens to generate."""
    return serve.get_app_handle(model).stats.remote().result(timeout_s=10).model_dump()


def _abandon(server, model: str, path: str, body: dict, key: str) -> tuple[dict, dict, str]:
    """Send a long generation and leave once the engine runs it. The engine's counters before,
    and once it runs nothing and has counted the sequence's end; the request's id."""
    before = _engine(model)
    request_id = f"abandoned-{uuid.uuid4().hex}"
    connection = _send(server, path, body, {"Authorization": f"Bearer {key}", "x-request-id": request_id})
    try:
        wait_for(lambda: _engine(model)["running_requests"] >= 1, interval_s=0.01)
    finally:
        connection.close()
    ended = before["cancelled_requests_total"] + before["finished_requests_total"]

    def settled() -> dict | None:  # the engine ran nothing and counted the sequence's end, however it ended
        stats = _engine(model)
        done = stats["running_requests"] == 0 and stats["cancelled_requests_total"] + stats["finished_requests_total"] > ended
        return stats if done else None

    return before, wait_for(settled, timeout_s=10), request_id


@pytest.mark.parametrize(("model", "path"), [
    ("tiny-llama", CHAT), ("tiny-llama-hf", CHAT), ("tiny-llama", COMPLETE),
], ids=["openvino-chat", "transformers-chat", "openvino-completion"])
def test_an_abandoned_generation_is_cancelled_in_the_engine_and_logged_499(server, model, path):
    body = {"model": model, "max_tokens": LONG, "temperature": 0,
            **({"messages": MSG} if path == CHAT else {"prompt": "Tell me everything."})}
    for _ in range(3):  # a fast engine may finish the tiny model's 472 tokens before the client's leaving arrives
        key, key_id = new_key(server)  # a key per try: the metric below counts this request alone
        before, after, request_id = _abandon(server, model, path, body, key)
        if after["finished_requests_total"] == before["finished_requests_total"]:
            break
    # Cut short, not finished: one more cancelled sequence, none finished, fewer tokens than asked.
    assert after["cancelled_requests_total"] == before["cancelled_requests_total"] + 1
    assert after["finished_requests_total"] == before["finished_requests_total"]
    assert after["generated_tokens_total"] - before["generated_tokens_total"] < LONG

    (line,) = wait_for(lambda: _access_lines(request_id), timeout_s=20, interval_s=0.5)
    assert line["status"] == 499 and line["aborted"] is True and line["model"] == model, line
    assert line["error_type"] is None  # a client's choice, not an error of ours
    counted = wait_for(lambda: (samples := scrape(server)) and total(
        samples, "hf_server_requests_total", key_id=key_id, status="499") == 1 and samples, timeout_s=30, interval_s=1)
    assert total(counted, "hf_server_requests_total", key_id=key_id) == 1  # no 500 beside it
    assert_others_served(server)

