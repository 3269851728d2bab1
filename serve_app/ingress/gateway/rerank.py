"""The gateway's flow for /v1/rerank: the model's document limit, tokens reserved, each
document's score from the cache (keyed by the query and the document) or the model, then the
ranking, top_n and documents applied here, so a cached score serves any top_n."""

from __future__ import annotations

from contract.errors import too_many_documents
from contract.model_api import with_token_budget
from contract.protocol import new_id
from contract.scoring_protocol import (
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankUsage,
)
from serve_app.ingress.gateway.cache_keys import item_key
from serve_app.ingress.gateway.callers import Caller
from serve_app.ingress.gateway.item_flow import Item, ItemFlow
from serve_app.ingress.gateway.model_call import ModelCall
from serve_app.ingress.gateway.reply import Reply
from serve_app.ingress.model_directory import ModelEntry


def reservation(request: RerankRequest) -> int:
    """Tokens reserved at admission: about four characters per token, the query once per
    document, plus the pair's special tokens."""
    query = len(request.query) // 4
    return sum(query + len(document) // 4 + 3 for document in request.documents)


async def rerank_documents(items: ItemFlow, calls: ModelCall, entry: ModelEntry, caller: Caller, request: RerankRequest,
                           no_cache: bool) -> Reply:
    assert entry.client is not None and entry.info is not None
    documents = request.documents
    limit = entry.info.max_rerank_documents
    if limit is not None and len(documents) > limit:
        raise too_many_documents(len(documents), limit, request.model)
    admission = await items.admit(caller, reservation(request), "documents")
    revision = entry.info.revision
    keys = items.keys(caller, documents, lambda scope, document: item_key("rerank", revision, scope, request.query, document))

    async def compute(missing: list[int], counted: int) -> tuple[list[Item], int]:
        sub = with_token_budget(request.model_copy(update={"documents": [documents[i] for i in missing], "top_n": None,
                                                           "return_documents": False}),
                                items.max_request_tokens, counted)
        response: RerankResponse = await calls.with_progress(entry, "rerank", sub, admission)
        scores = {result.index: result.relevance_score for result in response.results}
        tokens = response.usage.input_tokens or [0] * len(missing)
        return [{"tokens": tokens[j], "score": scores[j]} for j in range(len(missing))], response.usage.prompt_tokens

    scored = await items.run(caller, request.model, admission, keys, kind="rerank", param="documents", no_cache=no_cache,
                             compute=compute)
    total = scored.total_tokens
    order = sorted(range(len(documents)), key=lambda i: -scored.items[i]["score"])  # stable: ties keep order
    results = [
        RerankResult(index=i, relevance_score=scored.items[i]["score"],
                     document=RerankDocument(text=documents[i]) if request.return_documents else None)
        for i in order[: request.top_n]
    ]
    response = RerankResponse(id=new_id("rerank"), model=request.model, results=results,
                              usage=RerankUsage(prompt_tokens=total, total_tokens=total))
    return Reply(response, admission.headers, scored.cache)
