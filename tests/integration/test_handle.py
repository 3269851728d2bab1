"""Typed DeploymentHandle calls from a separate Ray driver (another process, as another Ray
job would do), taking and returning the protocol models."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import ray

from tests.conftest import ROOT

DRIVER = textwrap.dedent(
    """
    import json, sys
    import ray
    from ray import serve
    from contract.protocol import ChatCompletionRequest, ChatCompletionResponse, CompletionRequest
    from contract.embedding_protocol import EmbeddingRequest, EmbeddingResponse

    ray.init(address=sys.argv[1], log_to_driver=False)
    llama = serve.get_app_handle("tiny-llama")
    request = ChatCompletionRequest(model="tiny-llama", messages=[{"role": "user", "content": "hello"}],
                                    max_tokens=6, temperature=0)
    response = llama.chat.remote(request).result()
    assert isinstance(response, ChatCompletionResponse), type(response)
    import time
    sent = time.monotonic()
    stream = llama.options(stream=True).chat_stream.remote(request)
    chunks = [next(stream)]
    first_wait = time.monotonic() - sent
    chunks += list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    as_dict = llama.complete.remote({"model": "tiny-llama", "prompt": "Paris", "max_tokens": 3, "temperature": 0}).result()
    embedding = serve.get_app_handle("tiny-bert").embed.remote(EmbeddingRequest(model="tiny-bert", input=["a", "b"])).result()
    assert isinstance(embedding, EmbeddingResponse)
    try:
        llama.chat.remote({"model": "tiny-llama", "messages": []}).result()
        bad = None
    except Exception as exc:
        bad = type(exc).__name__ + ": " + str(getattr(exc, "cause", exc))
    print(json.dumps({
        "text": response.choices[0].message.content,
        "usage": response.usage.completion_tokens,
        "streamed": streamed,
        "first_role": chunks[0].choices[0].delta.role,
        "replica_started_s": [c._replica_started_s for c in chunks[:2]],
        "first_wait_s": first_wait,
        "completion_tokens": as_dict.usage.completion_tokens,
        "vectors": len(embedding.data),
        "bad": bad,
    }))
    """
)


def test_handle_calls_from_a_separate_driver(server, tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    address = ray.get_runtime_context().gcs_address
    result = subprocess.run(
        [sys.executable, str(script), address], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    with server.http() as http:
        over_http = http.post(
            "/v1/chat/completions",
            json={"model": "tiny-llama", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 6, "temperature": 0},
        ).json()
    assert out["text"] == over_http["choices"][0]["message"]["content"]
    assert out["streamed"] == out["text"]
    # The role delta opens the stream (sent with the first token); the replica notes on the first
    # chunk how long it worked before sending it (the gateway's queue metric takes it off).
    assert out["first_role"] == "assistant"
    first, second = out["replica_started_s"]
    assert 0 < first <= out["first_wait_s"] and second is None
    assert out["usage"] == 6
    assert out["completion_tokens"] == 3
    assert out["vectors"] == 2
    assert out["bad"] is not None and "messages" in out["bad"]
