"""The gateway's flow for /v1/classify: tokens reserved, each input's labels and scores from
the cache (keyed by the input) or the model, then the answer in the request's order."""

from __future__ import annotations

from typing import TYPE_CHECKING

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
from serve_app.ingress.gateway.reply import Reply
from serve_app.ingress.gateway.scoring import call_scoring_model, score_items
from serve_app.ingress.model_directory import ModelEntry

if TYPE_CHECKING:
    from serve_app.ingress.gateway.orchestrator import Gateway


def reservation(request: ClassificationRequest) -> int:
    """Tokens reserved at admission: about four characters per token, plus the special tokens."""
    return sum(len(text) // 4 + 2 for text in request.inputs())


async def classify_inputs(gateway: Gateway, entry: ModelEntry, caller: Caller, request: ClassificationRequest,
                   no_cache: bool) -> Reply:
    assert entry.client is not None and entry.info is not None
    texts = request.inputs()
    admission = await gateway.quota.admit(caller, reservation(request), too_large_param="input")
    scope = gateway.cache.scope(caller)
    keys = [item_key("classification", entry.info.revision, scope, text) if gateway.cache.enabled else None
            for text in texts]

    async def compute(missing: list[int], counted: int):
        sub = with_token_budget(request.model_copy(update={"input": [texts[i] for i in missing]}),
                                gateway.args.max_request_tokens, counted)
        response: ClassificationResponse = await call_scoring_model(gateway, entry, "classify", sub, admission)
        tokens = response.usage.input_tokens or [0] * len(missing)
        items = [{"tokens": tokens[j], "data": data.model_dump(mode="json", exclude={"index"})}
                 for j, data in enumerate(response.data)]
        return items, response.usage.prompt_tokens

    scored = await score_items(gateway, request.model, admission, keys, kind="classification", no_cache=no_cache,
                               compute=compute, param="input")
    gateway.quota.settle(admission, scored.computed_tokens)
    total = scored.total_tokens
    gateway.usage.record(caller, total, 0)
    response = ClassificationResponse(
        id=new_id("classify"), created=now(), model=request.model,
        data=[ClassificationData(index=i, **item["data"]) for i, item in enumerate(scored.items)],
        usage=ClassificationUsage(prompt_tokens=total, total_tokens=total),
    )
    return Reply(response, admission.headers, scored.cache)
