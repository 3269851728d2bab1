"""The ingress's embedding coalescer: concurrent calls become one, each caller still gets
exactly its own vectors, token counts and errors."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import pytest

from contract.errors import ContextLengthExceededError, InternalServerError
from contract.protocol import EmbeddingData, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage
from serve_app.gateway.embed_coalescer import Coalescers, EmbeddingCoalescer, split


class Encoder:
    """Vector [len(text), position in its call]; tokens = words + 2. 'TOO LONG' is refused
    with the index of the input in the call, as the model replica does."""

    def __init__(self, delay_s: float = 0.01, fail: bool = False):
        self.calls: list[list] = []
        self.delay_s = delay_s
        self.fail = fail

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        inputs = request.inputs()
        self.calls.append(inputs)
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise InternalServerError("engine broke")
        for index, item in enumerate(inputs):
            if item == "TOO LONG":
                raise ContextLengthExceededError(f"input[{index}] has too many tokens", param="input")
        vectors = [np.array([len(str(item)), position], dtype="<f4") for position, item in enumerate(inputs)]
        tokens = [len(str(item).split()) + 2 for item in inputs]
        return EmbeddingResponse(
            data=[EmbeddingData(index=i, embedding=base64.b64encode(v.tobytes()).decode()) for i, v in enumerate(vectors)],
            model="m", usage=EmbeddingUsage(prompt_tokens=sum(tokens), total_tokens=sum(tokens), input_tokens=tokens))


def request(*inputs) -> EmbeddingRequest:
    return EmbeddingRequest(model="m", input=list(inputs), encoding_format="base64")


def lengths(response: EmbeddingResponse) -> list[float]:
    return [float(np.frombuffer(base64.b64decode(d.embedding), dtype="<f4")[0]) for d in response.data]


def test_concurrent_calls_become_fewer_calls_and_each_gets_its_own_answer():
    encoder = Encoder()
    texts = [("a",), ("bb cc",), ("ddd", "eeee"), ("fffff",), ("gggggg six",)]

    async def run():
        coalescer = EmbeddingCoalescer(encoder, max_inputs=32)
        return await asyncio.gather(*(coalescer.embed(request(*t)) for t in texts))

    responses = asyncio.run(run())
    assert len(encoder.calls) < len(texts)  # sent together
    assert sum(len(call) for call in encoder.calls) == 6  # every input once
    for inputs, response in zip(texts, responses, strict=True):
        assert lengths(response) == [float(len(t)) for t in inputs]
        assert [d.index for d in response.data] == list(range(len(inputs)))
        own = [len(t.split()) + 2 for t in inputs]
        assert response.usage.input_tokens == own
        assert response.usage.prompt_tokens == response.usage.total_tokens == sum(own)


def test_a_lone_call_goes_at_once_and_batches_stay_within_the_model_s_batch_size():
    encoder = Encoder(delay_s=0.05)

    async def run():
        coalescer = EmbeddingCoalescer(encoder, max_inputs=4)
        started = asyncio.get_running_loop().time()
        await coalescer.embed(request("alone"))
        lone_s = asyncio.get_running_loop().time() - started
        await asyncio.gather(*(coalescer.embed(request(f"text {i}")) for i in range(10)))
        return lone_s

    lone_s = asyncio.run(run())
    assert encoder.calls[0] == ["alone"] and lone_s < 0.5  # nothing waited for company
    assert max(len(call) for call in encoder.calls) <= 4
    assert sum(len(call) for call in encoder.calls[1:]) == 10


def test_a_refused_input_fails_only_its_own_request():
    encoder = Encoder()

    async def run():
        coalescer = EmbeddingCoalescer(encoder, max_inputs=32)
        return await asyncio.gather(coalescer.embed(request("fine")), coalescer.embed(request("x", "TOO LONG")),
                                    coalescer.embed(request("also fine")), return_exceptions=True)

    fine, refused, also_fine = asyncio.run(run())
    assert isinstance(refused, ContextLengthExceededError)
    assert "input[1]" in refused.message  # its own index, not its place in the batch
    assert lengths(fine) == [4.0] and lengths(also_fine) == [9.0]


def test_a_model_failure_fails_every_caller_of_the_batch():
    encoder = Encoder(fail=True)

    async def run():
        coalescer = EmbeddingCoalescer(encoder, max_inputs=32)
        return await asyncio.gather(*(coalescer.embed(request(f"t{i}")) for i in range(3)), return_exceptions=True)

    assert all(isinstance(outcome, InternalServerError) for outcome in asyncio.run(run()))


def test_a_cancelled_caller_does_not_disturb_the_others():
    encoder = Encoder(delay_s=0.05)

    async def run():
        coalescer = EmbeddingCoalescer(encoder, max_inputs=32)
        await coalescer.embed(request("warm"))
        first = asyncio.ensure_future(coalescer.embed(request("gone")))
        rest = asyncio.gather(*(coalescer.embed(request(f"stay {i}")) for i in range(3)))
        await asyncio.sleep(0.01)
        first.cancel()
        return await rest

    assert [lengths(r) for r in asyncio.run(run())] == [[6.0]] * 3


def test_split_refuses_an_answer_of_the_wrong_size():
    response = EmbeddingResponse(data=[EmbeddingData(index=0, embedding="")], model="m",
                                 usage=EmbeddingUsage(prompt_tokens=1, total_tokens=1, input_tokens=[1]))
    with pytest.raises(RuntimeError, match="1 vectors for 2 inputs"):
        split(response, [1, 1])


def test_one_coalescer_per_model_and_none_for_a_chosen_dimensions():
    coalescers, a, b, other = Coalescers(), Encoder(), Encoder(), Encoder()

    async def run():
        first = coalescers.for_request(request("x"), a, 32)
        assert coalescers.for_request(request("y"), a, 32) is first
        assert coalescers.for_request(EmbeddingRequest(model="m", input="x", dimensions=8), a, 32) is None
        assert coalescers.for_request(request("z"), b, 16) is first and first.client is b  # redeployed
        second = coalescers.for_request(EmbeddingRequest(model="other", input="x"), other, 32)
        assert second is not first
        # Concurrent calls for two models never share a batch.
        await asyncio.gather(*(c.embed(request(f"{name} {i}")) for i in range(4) for c, name in ((first, "m"), (second, "o"))))

    asyncio.run(run())
    assert not a.calls
    assert sorted(item for call in b.calls for item in call) == [f"m {i}" for i in range(4)]
    assert sorted(item for call in other.calls for item in call) == [f"o {i}" for i in range(4)]
