"""The gateway's flow for /tokenize and /detokenize: a request counted against its key's
requests per minute (no tokens: the model computes nothing), one call to the model's tokenizer
past its breaker, and no response cache (answering costs less than a cache lookup)."""

from __future__ import annotations

from contract.endpoints import Endpoint
from contract.tokenize_protocol import DetokenizeRequest, TokenizeRequest
from serve_app.ingress.gateway.callers import Caller
from serve_app.ingress.gateway.model_call import ModelCall
from serve_app.ingress.gateway.quota import Quota
from serve_app.ingress.gateway.reply import Reply
from serve_app.ingress.gateway.usage import UsageRecorder
from serve_app.ingress.model_directory import ModelEntry


async def tokenizer_call(quota: Quota, calls: ModelCall, usage: UsageRecorder, endpoint: Endpoint, entry: ModelEntry,
                         caller: Caller, request: TokenizeRequest | DetokenizeRequest) -> Reply:
    assert entry.client is not None and entry.info is not None
    admission = await quota.admit(caller, 0)
    await calls.admit(request.model, admission)
    call = getattr(entry.client, endpoint.method)(request)
    # Its answer says nothing of the engine's health: it does not reset the model's breaker.
    response = await calls.run(call, request.model, entry.info.request_timeout_s, admission, healthy=False)
    usage.record(caller, 0, 0)
    return Reply(response, admission.headers)
