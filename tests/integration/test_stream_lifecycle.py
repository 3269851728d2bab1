"""Streams under load: continuous batching admits new requests mid-generation, and a client
that disconnects cancels its generation in the engine. Each test asserts an order of events
(what finished before what), not a ratio of latencies; the latencies are printed."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

LONG = 440  # tokens; the tiny model's context is 512


def engine_stats(server, model: str) -> dict:
    """The model's engine counters from /status; they are null while its replica is slow to
    answer (ENGINE_STATS_TIMEOUT_S), so ask again until they come."""
    def read() -> dict | None:
        try:
            with server.http() as http:
                models = http.get("/status").json()["models"]
        except httpx.RemoteProtocolError:  # the front proxy dropped the connection: ask again
            return None
        return next(m["engine"] for m in models if m["id"] == model)

    return wait_for(read)


def wait_for(predicate, timeout_s: float = 20.0, interval_s: float = 0.1, last=None):
    """predicate()'s first truthy value; on timeout an AssertionError with last() when given."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"condition not reached in {timeout_s}s" + (f": {last()}" if last else ""))


ATTEMPTS = 3  # see below: an attempt the model finished before the close reached it proves nothing


def _disconnect(server, model: str) -> tuple[dict, dict, float]:
    """Read three tokens of a long stream, close the connection, and wait until the engine has
    either cancelled the sequence or finished it: (stats before, stats after, the close's time)."""
    before = engine_stats(server, model)
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Tell me everything."}],
        "max_tokens": LONG,
        "temperature": 0,
        "stream": True,
    }
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            # The first chunk is the role-only delta; wait for three that carry text, so at
            # least three tokens were generated before the disconnect.
            deltas = (
                json.loads(line[len("data: ") :])["choices"][0]["delta"]
                for line in response.iter_lines()
                if line.startswith("data: {")
            )
            for _ in range(3):
                next(delta for delta in deltas if delta.get("content"))
        # Leaving both blocks closes the connection mid-stream.
    closed = time.monotonic()
    # Wait for the sequence's end itself, not only for no running request: the OpenVINO replica
    # stops counting the request as running when its stream is closed, but its counters come
    # from the engine process with the next message, a moment later (a read in between saw
    # running 0 and the cancellation not yet counted).
    seen: list[dict] = []

    def ended() -> dict | None:
        seen.append(engine_stats(server, model))
        done = seen[-1]["running_requests"] == 0 and (
            seen[-1]["cancelled_requests_total"] > before["cancelled_requests_total"]
            or seen[-1]["finished_requests_total"] > before["finished_requests_total"])
        return seen[-1] if done else None

    return before, wait_for(ended, last=lambda: seen[-1]), closed


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-llama-hf"])
def test_client_disconnect_cancels_generation(server, model):
    # The tiny model writes its 440 tokens in about half a second; on a loaded machine the close
    # can take longer than that to reach the engine, and the sequence then ends finished. Such
    # an attempt is repeated; a disconnect that never cancels fails every attempt.
    finished_first = 0
    for _ in range(ATTEMPTS):
        before, after, closed = _disconnect(server, model)
        if after["cancelled_requests_total"] > before["cancelled_requests_total"]:
            break
        finished_first += 1
    generated = after["generated_tokens_total"] - before["generated_tokens_total"]
    print(f"\n{model}: cancelled after {generated} of {LONG} tokens, seen {time.monotonic() - closed:.2f}s after the "
          f"close; {finished_first} earlier attempt(s) finished before the close reached the engine")
    assert after["cancelled_requests_total"] == before["cancelled_requests_total"] + 1, (finished_first, after)
    assert 3 <= generated < LONG  # stopped early: the sequence was cancelled, not finished


def _timeline(server, model: str) -> dict:
    """Start a long stream A; once it is decoding, send a short request B. Returns what was
    seen when B's answer arrived: A's chunks so far (`a_at_b`), A's chunks and tokens in all
    (`a_chunks`, `a_tokens`) and the times."""
    client = server.async_openai()
    messages = [{"role": "user", "content": "Tell me everything."}]

    async def run():
        a_started = asyncio.Event()
        seen = {"a_tokens": 0, "a_chunks": 0}

        async def long_stream():
            stream = await client.chat.completions.create(
                model=model, messages=messages, max_tokens=LONG, temperature=0, stream=True,
                stream_options={"include_usage": True},
            )
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    seen["a_chunks"] += 1  # a chunk may carry several tokens
                    if seen["a_chunks"] == 5:
                        a_started.set()
                if chunk.usage is not None:
                    seen["a_tokens"] = chunk.usage.completion_tokens
            seen["a_done"] = time.monotonic()

        async def short_request():
            await a_started.wait()
            seen["b_sent"] = time.monotonic()
            response = await client.chat.completions.create(model=model, messages=messages, max_tokens=4, temperature=0)
            seen["b_done"], seen["a_at_b"] = time.monotonic(), seen["a_chunks"]
            assert response.usage.completion_tokens == 4

        await asyncio.gather(long_stream(), short_request())
        return seen

    seen = asyncio.run(run())
    print(f"\n{model}: B answered in {seen['b_done'] - seen['b_sent']:.3f}s, after {seen['a_at_b']} of A's "
          f"{seen['a_chunks']} chunks ({seen['a_tokens']} tokens); A ended {seen['a_done'] - seen['b_sent']:.3f}s after B was sent")
    return seen


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-llama-hf"])  # OpenVINO GenAI's and transformers' batching
def test_continuous_batching_admits_requests_mid_generation(server, model):
    seen = _timeline(server, model)
    # B joined the running batch at the next engine step and was answered while A was still
    # streaming: it did not wait for A's hundreds of remaining tokens.
    assert seen["a_tokens"] == LONG
    assert seen["a_at_b"] < seen["a_chunks"] and seen["b_done"] < seen["a_done"], seen
