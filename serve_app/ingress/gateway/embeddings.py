"""The gateway's flow for /v1/embeddings, per input through item_flow.py: the model computes
only the inputs the cache lacks.

Cached entries hold the input's token count and its float32 vector; the model is always asked
for base64 (the cheapest to carry across the handle) and the answer is re-encoded in the
format the client asked for.
"""

from __future__ import annotations

import numpy as np

from contract.embedding_protocol import (
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
)
from contract.errors import InvalidRequestError
from contract.model_api import with_token_budget
from contract.vectors import decode_base64_vector, encode_vector
from serve_app.ingress.gateway.cache_keys import embedding_key
from serve_app.ingress.gateway.callers import Caller
from serve_app.ingress.gateway.item_flow import Codec, Item, ItemFlow
from serve_app.ingress.gateway.model_call import ModelCall
from serve_app.ingress.gateway.reply import Reply
from serve_app.ingress.model_directory import ModelEntry


def reservation(request: EmbeddingRequest) -> int:
    """Tokens reserved at admission: about four characters per token, plus the special tokens."""
    return sum(len(item) // 4 + 2 if isinstance(item, str) else len(item) for item in request.inputs())


async def embed(items: ItemFlow, calls: ModelCall, entry: ModelEntry, caller: Caller, request: EmbeddingRequest,
                no_cache: bool, *, max_inputs: int) -> Reply:
    assert entry.client is not None and entry.info is not None
    client, info = entry.client, entry.info
    inputs = request.inputs()
    if len(inputs) > max_inputs:
        raise InvalidRequestError(f"input has {len(inputs)} items; at most {max_inputs} are allowed per request.",
                                  param="input")
    admission = await items.admit(caller, reservation(request), "input")
    keys = items.keys(caller, inputs, lambda scope, item: (
        embedding_key(info.revision, scope, request.dimensions, item) if isinstance(item, str) else None))

    async def compute(missing: list[int], counted: int) -> tuple[list[Item], int]:
        sub = with_token_budget(request.model_copy(update={"input": [inputs[i] for i in missing], "encoding_format": "base64"}),
                                items.max_request_tokens, counted)
        if len(missing) <= (info.max_batch_size or 32):  # one batch: bounded outright, the cheapest call
            response = await calls.run(client.embed(sub), request.model, info.request_timeout_s, admission)
        else:  # several batches: bounded by the model's progress
            response = await calls.with_progress(entry, "embed", sub, admission)
        per_input = response.usage.input_tokens or [0] * len(missing)
        computed = [{"tokens": count, "vector": decode_base64_vector(data.embedding)}
                    for data, count in zip(response.data, per_input, strict=True)]
        return computed, response.usage.prompt_tokens

    found = await items.run(caller, request.model, admission, keys, kind="embedding", param="input", no_cache=no_cache,
                            compute=compute, codec=VECTORS)
    result = EmbeddingResponse(
        data=[EmbeddingData(index=i, embedding=encode_vector(item["vector"], request.encoding_format))
              for i, item in enumerate(found.items)],
        model=request.model,
        usage=EmbeddingUsage(prompt_tokens=found.total_tokens, total_tokens=found.total_tokens),
    )
    return Reply(result, admission.headers, found.cache)


def _pack(item: Item) -> bytes:
    return int(item["tokens"]).to_bytes(4, "little") + item["vector"].astype("<f4").tobytes()


def _unpack(value: bytes) -> Item:
    return {"tokens": int.from_bytes(value[:4], "little"), "vector": np.frombuffer(value[4:], dtype="<f4")}


VECTORS = Codec(_pack, _unpack)  # 4 bytes of token count, then the float32 vector
