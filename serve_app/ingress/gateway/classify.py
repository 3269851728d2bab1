"""The gateway's flow for /v1/classify: tokens reserved, each input's labels and scores from
the cache (keyed by the input) or the model, then the answer in the request's order."""

from __future__ import annotations

from contract.model_api import with_token_budget
from contract.protocol import new_id, now
from contract.scoring_protocol import (
    ClassificationData,
    ClassificationRequest,
    ClassificationResponse,
    ClassificationUsage,
)
from serve_app.ingress.gateway.cache_keys import item_key
from serve_app.ingress.gateway.callers import Caller
from serve_app.ingress.gateway.item_flow import Item, ItemFlow
from serve_app.ingress.gateway.model_call import ModelCall
from serve_app.ingress.gateway.reply import Reply
from serve_app.ingress.model_directory import ModelEntry


def reservation(request: ClassificationRequest) -> int:
    """Tokens reserved at admission: about four characters per token, plus the special tokens."""
    return sum(len(text) // 4 + 2 for text in request.inputs())


async def classify_inputs(items: ItemFlow, calls: ModelCall, entry: ModelEntry, caller: Caller,
                          request: ClassificationRequest, no_cache: bool) -> Reply:
    assert entry.client is not None and entry.info is not None
    texts = request.inputs()
    admission = await items.admit(caller, reservation(request), "input")
    revision = entry.info.revision
    keys = items.keys(caller, texts, lambda scope, text: item_key("classification", revision, scope, text))

    async def compute(missing: list[int], counted: int) -> tuple[list[Item], int]:
        sub = with_token_budget(request.model_copy(update={"input": [texts[i] for i in missing]}),
                                items.max_request_tokens, counted)
        response: ClassificationResponse = await calls.with_progress(entry, "classify", sub, admission)
        tokens = response.usage.input_tokens or [0] * len(missing)
        computed = [{"tokens": tokens[j], "data": data.model_dump(mode="json", exclude={"index"})}
                    for j, data in enumerate(response.data)]
        return computed, response.usage.prompt_tokens

    scored = await items.run(caller, request.model, admission, keys, kind="classification", param="input",
                             no_cache=no_cache, compute=compute)
    total = scored.total_tokens
    response = ClassificationResponse(
        id=new_id("classify"), created=now(), model=request.model,
        data=[ClassificationData(index=i, **item["data"]) for i, item in enumerate(scored.items)],
        usage=ClassificationUsage(prompt_tokens=total, total_tokens=total),
    )
    return Reply(response, admission.headers, scored.cache)
