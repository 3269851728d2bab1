"""What a client sees through Ray's Python proxy (HF_SERVER_HAPROXY=false): chat, a stream and
embeddings answer; a client that leaves, streaming or not, cancels its sequence in the engine;
header limits give the ingress's JSON 431. The integration tier covers the same in HAProxy mode."""

from __future__ import annotations

import json
import math
import socket
import uuid
from pathlib import Path

import httpx
import ray

from tests.integration.conftest import LLAMA_CONTEXT
from tests.integration.test_limits import test_too_many_or_too_large_headers_are_431  # noqa: F401  (run here too)
from tests.integration.test_stream_lifecycle import engine_stats, wait_for

MSG = [{"role": "user", "content": "Tell me everything."}]
CHAT = "/v1/chat/completions"
LONG = LLAMA_CONTEXT - 40  # tokens (the prompt takes under 40); greedy decoding of the tiny model never stops early


def test_chat(server):
    response = server.openai().chat.completions.create(model="tiny-llama", messages=MSG, max_tokens=4, temperature=0)
    assert response.choices[0].message.role == "assistant" and response.choices[0].message.content
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 4


def test_stream(server):
    stream = server.openai().chat.completions.create(model="tiny-llama", messages=MSG, max_tokens=4, temperature=0,
                                                     stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    finish = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert text and finish == ["length"]
    assert chunks[-1].usage.completion_tokens == 4  # the usage chunk comes last


def test_embeddings(server):
    response = server.openai().embeddings.create(model="tiny-bert", input=["one", "two"])
    assert [item.index for item in response.data] == [0, 1]
    for item in response.data:  # sentence-transformers layout: normalized vectors
        assert len(item.embedding) == 32
        assert math.isclose(math.sqrt(sum(x * x for x in item.embedding)), 1.0, rel_tol=1e-3)


def _ended_since(server, before: dict) -> dict | None:
    """The engine's counters once it runs nothing and has counted one more sequence's end, however
    it ended (they come from the engine process a moment after the request stops running)."""
    stats = engine_stats(server, "tiny-llama")
    ended = stats["cancelled_requests_total"] + stats["finished_requests_total"]
    done = stats["running_requests"] == 0 and ended > before["cancelled_requests_total"] + before["finished_requests_total"]
    return stats if done else None


def _abandon(server, leave) -> tuple[dict, dict]:
    """The engine's counters before and after `leave(before)` sent a long generation and left
    mid-way; tried again (up to three times) where the engine finished before the leaving arrived."""
    for _ in range(3):
        before = engine_stats(server, "tiny-llama")
        leave(before)
        after = wait_for(lambda before=before: _ended_since(server, before))
        if after["finished_requests_total"] == before["finished_requests_total"]:
            break
    generated = after["generated_tokens_total"] - before["generated_tokens_total"]
    print(f"\ncancelled after {generated} of {LONG} tokens")
    # Cut short, not finished: one more cancelled sequence, none finished, fewer tokens than asked.
    assert after["cancelled_requests_total"] == before["cancelled_requests_total"] + 1
    assert after["finished_requests_total"] == before["finished_requests_total"]
    assert generated < LONG
    return before, after


def test_a_stream_whose_client_leaves_is_cancelled(server):
    body = {"model": "tiny-llama", "messages": MSG, "max_tokens": LONG, "temperature": 0, "stream": True}

    def leave(_before: dict) -> None:
        with server.http() as http, http.stream("POST", CHAT, json=body) as response:
            assert response.status_code == 200
            lines = (line for line in response.iter_lines() if line.startswith("data: {"))
            for _ in range(3):  # three text deltas: generation is under way when the client leaves
                next(line for line in lines if json.loads(line[len("data: "):])["choices"][0]["delta"].get("content"))

    before, after = _abandon(server, leave)
    assert after["generated_tokens_total"] - before["generated_tokens_total"] >= 3


def _access_lines(request_id: str) -> list[dict]:
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs" / "serve"
    return [json.loads(line) for file in logs.glob("replica_ingress_Ingress_*.log")
            for line in file.read_text(errors="replace").splitlines() if request_id in line and '"endpoint"' in line]


def test_an_abandoned_generation_is_cancelled_and_logged_499(server):
    url = httpx.URL(server.base_url)
    payload = json.dumps({"model": "tiny-llama", "messages": MSG, "max_tokens": LONG, "temperature": 0}).encode()
    request_ids: list[str] = []

    def leave(before: dict) -> None:
        request_ids.append(f"abandoned-{uuid.uuid4().hex}")
        head = [f"POST {CHAT} HTTP/1.1", f"Host: {url.host}:{url.port}", "Content-Type: application/json",
                f"Content-Length: {len(payload)}", f"x-request-id: {request_ids[-1]}"]
        # A raw connection, so that the test decides when the client leaves: once the engine runs
        # the request (or has already ended it: then _abandon tries again).
        with socket.create_connection((url.host, url.port), timeout=30) as connection:
            connection.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
            wait_for(lambda: engine_stats(server, "tiny-llama")["running_requests"] >= 1 or _ended_since(server, before),
                     interval_s=0.05)

    _abandon(server, leave)
    (line,) = wait_for(lambda: _access_lines(request_ids[-1]), timeout_s=20, interval_s=0.5)
    assert line["status"] == 499 and line["aborted"] is True and line["error_type"] is None, line
