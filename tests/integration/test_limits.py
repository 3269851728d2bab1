"""Bounded resources through Ray's real HTTP proxy: header limits, idle connections, slow
clients, and hostile text."""

from __future__ import annotations

import socket

import httpx
import psutil
import pytest

from contract.config import read_env
from serve_app.cli import haproxy as haproxy_mode
from tests.integration.conftest import KEEP_ALIVE_S


def _address(server) -> tuple[str, int]:
    url = httpx.URL(server.base_url)
    return url.host, url.port


def test_too_many_or_too_large_headers_are_431(server):
    with server.http() as http:
        many = http.get("/v1/models", headers={f"x-h{i}": "v" for i in range(150)})
        large = http.get("/health", headers={"x-big": "a" * 40_000})
        fine = http.get("/v1/models", headers={f"x-h{i}": "v" for i in range(20)})
    for response in (many, large):
        assert response.status_code == 431, response.text
        assert response.json()["error"]["code"] == "request_header_fields_too_large"
    assert fine.status_code == 200


def test_haproxys_own_5xx_page_is_the_openai_error_body(server):
    """HAProxy answers 502/503/504 itself from Ray's per-node page (no replica up, a timeout); the
    wrapper Ray runs as HAProxy replaced that page with the JSON error body before HAProxy read it
    (tests/unit/test_haproxy_mode.py sends a request through one)."""
    if read_env().haproxy is False:
        pytest.skip("Ray's Python proxy serves this run: HAProxy has no page to check")
    pages = {node / haproxy_mode.RAY_ERROR_PAGE for process in psutil.process_iter(["name", "cmdline"])
             if process.info["name"] == "haproxy" for node in haproxy_mode.node_dirs(process.info["cmdline"] or ())}
    assert pages, "no HAProxy reads a config under Ray's directory"
    for page in pages:
        assert page.read_bytes() == haproxy_mode.ERROR_PAGE.encode(), page


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    return head


def test_idle_keep_alive_connections_are_closed(server):
    with socket.create_connection(_address(server), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"200 OK" in _read_response(sock)
        # Idle past the keep-alive timeout (the wait is the thing under test): the server closes
        # the connection; a socket timeout here would mean it never did.
        sock.settimeout(KEEP_ALIVE_S + 10)
        assert sock.recv(1) == b""


def test_slow_clients_do_not_hold_up_others(server):
    slow = []
    try:
        for _ in range(40):  # each sends half a request and then nothing
            sock = socket.create_connection(_address(server), timeout=10)
            sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n")
            slow.append(sock)
        # Answered while every slow connection is still open, within the model's request_timeout_s
        # (a liveness bound: how fast is a benchmark's question).
        with httpx.Client(base_url=server.base_url, timeout=server.plan.models["tiny-bert"].request_timeout_s) as http:
            response = http.post("/v1/embeddings", json={"model": "tiny-bert", "input": "still served"})
        assert response.status_code == 200
    finally:
        for sock in slow:
            sock.close()


def test_a_lone_surrogate_through_the_proxy_is_served(server):
    raw = '{"model": "tiny-llama", "messages": [{"role": "user", "content": "caf\\ud800"}], "max_tokens": 4, "temperature": 0}'
    with server.http() as http:
        chat = http.post("/v1/chat/completions", content=raw, headers={"Content-Type": "application/json"})
        embed = http.post("/v1/embeddings", content='{"model": "tiny-bert", "input": ["\\udfff", "ok"]}',
                          headers={"Content-Type": "application/json"})
        completion = http.post("/v1/completions", content='{"model": "tiny-llama", "prompt": "\\ud800x", "max_tokens": 2}',
                               headers={"Content-Type": "application/json"})
    assert chat.status_code == 200, chat.text
    assert embed.status_code == 200 and len(embed.json()["data"]) == 2
    assert completion.status_code == 200, completion.text


def test_a_top_p_that_float32_rounds_to_zero_is_served_and_the_engine_lives(server):
    """5e-324 is a valid top_p (> 0) that the engine's float32 would make 0: it once killed the
    engine process, and with it every caller's requests."""
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
            "temperature": 1, "top_p": 5e-324}
    with server.http() as http:
        assert http.post("/v1/chat/completions", json=body).status_code == 200
        after = http.post("/v1/chat/completions", json={**body, "top_p": 1})
    assert after.status_code == 200
