"""Concurrent /v1/embeddings calls for one model become one handle call.

Each handle call costs the ingress (routing, a Ray task, its result) and the model replica
(receiving, its own batching queue) a few CPU milliseconds whatever its size; with many
single-input requests that cost, not inference, is what limits throughput (docs/performance.md).
So the ingress gathers the calls that arrive while earlier ones are in flight, up to the
model's batch size in inputs, with Ray Serve's own `@serve.batch`, and sends them as one.

No call waits for company (`batch_wait_timeout_s=0`): a lone request goes at once, and
batches form only from requests that queued behind the calls in flight, so a quiet server
answers as fast as before. Each request still gets exactly its own vectors and token counts;
one whose input the model refuses (too long, an unknown token id) fails alone, because a
refused batch is sent again request by request.
"""

from __future__ import annotations

import asyncio

from ray import serve

from contract.errors import as_api_error
from contract.model_api import ModelClient
from contract.protocol import EmbeddingData, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage


def _count_inputs(requests: list[EmbeddingRequest]) -> int:
    return sum(len(request.inputs()) for request in requests)


class EmbeddingCoalescer:
    """Coalesces the `embed` calls of one model."""

    def __init__(self, client: ModelClient, max_inputs: int, in_flight: int = 2):
        self.client = client
        self.max_inputs = max_inputs
        # Decorated here, not on the class: @serve.batch keeps one queue per decorated function,
        # and a queue shared by every model would batch one model's inputs into another's call.
        # With two calls in flight (the default), the next is on its way to the model while the
        # model encodes the last, so the model does not idle for a round trip between them.
        self._send = serve.batch(max_batch_size=max_inputs, batch_wait_timeout_s=0.0,
                                 max_concurrent_batches=in_flight, batch_size_fn=_count_inputs)(self._send_batch)

    def retarget(self, client: ModelClient, max_inputs: int) -> None:
        """Later batches go to `client` (batches already sent finish where they are)."""
        self.client, self.max_inputs = client, max_inputs
        self._send.set_max_batch_size(max_inputs)

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        outcome = await self._send(request)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def _send_batch(self, requests: list[EmbeddingRequest]) -> list[EmbeddingResponse | BaseException]:
        # Outcomes, not raised errors: @serve.batch would log every failed batch as a crash
        # and hand every caller the same error.
        if len(requests) == 1:
            return [await self._one(requests[0])]
        combined = requests[0].model_copy(update={"input": [item for request in requests for item in request.inputs()]})
        try:
            response = await self.client.embed(combined)
        except Exception as exc:  # noqa: BLE001 - sorted below
            refused = as_api_error(exc)
            if refused is None or refused.status_code >= 500:
                return [exc] * len(requests)  # the model's failure is every caller's failure
            # Some request's input was refused, and the error names its index in the batch:
            # ask again one by one, so that each caller gets its own answer.
            return list(await asyncio.gather(*(self._one(request) for request in requests)))
        return split(response, [len(request.inputs()) for request in requests])

    async def _one(self, request: EmbeddingRequest) -> EmbeddingResponse | BaseException:
        try:
            return await self.client.embed(request)
        except Exception as exc:  # noqa: BLE001 - handed to its caller by embed()
            return exc


def split(response: EmbeddingResponse, counts: list[int]) -> list[EmbeddingResponse]:
    """One combined answer cut back into the requests it was made of, each indexed from 0 and
    with its own usage."""
    tokens = response.usage.input_tokens
    if tokens is None or len(tokens) != len(response.data) or sum(counts) != len(response.data):
        raise RuntimeError(f"the model answered {len(response.data)} vectors for {sum(counts)} inputs")
    parts, start = [], 0
    for count in counts:
        own = tokens[start : start + count]
        parts.append(EmbeddingResponse(
            data=[EmbeddingData(index=i, embedding=data.embedding) for i, data in enumerate(response.data[start : start + count])],
            model=response.model,
            usage=EmbeddingUsage(prompt_tokens=sum(own), total_tokens=sum(own), input_tokens=own),
        ))
        start += count
    return parts


class Coalescers:
    """An ingress's coalescers, one per model. Only requests without `dimensions` are
    coalesced: a value a client picks must not be able to make the ingress create queues
    without end."""

    def __init__(self, in_flight: int = 2) -> None:
        self._in_flight = in_flight
        self._by_model: dict[str, EmbeddingCoalescer] = {}

    def for_request(self, request: EmbeddingRequest, client: ModelClient, max_inputs: int) -> EmbeddingCoalescer | None:
        if request.dimensions is not None:
            return None
        coalescer = self._by_model.get(request.model)
        if coalescer is None:
            coalescer = self._by_model[request.model] = EmbeddingCoalescer(client, max_inputs, self._in_flight)
        elif coalescer.client is not client or coalescer.max_inputs != max_inputs:
            coalescer.retarget(client, max_inputs)  # the model was redeployed
        return coalescer
