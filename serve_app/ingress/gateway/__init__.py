"""The gateway between the parsed request and the model: API keys, model access, rate limits,
the response cache and circuit breakers. HTTP-free; ingress/http and ingress/routes adapt it.

- orchestrator.py: the Gateway, where each endpoint enters; reply.py: what it answers;
- callers.py, quota.py, cache_client.py (+ cache_keys.py), breaker_gate.py, usage.py: the
  replica-side copies of the shared state, which state_sync.py keeps fresh;
- generation_flow.py (chat, completions; their specs in generation.py), and item_flow.py (the
  per-item cache) for embeddings.py, rerank.py, classify.py, and tokenize.py: each endpoint's flow;
- model_call.py: one call to a model past its breaker; failures.py: what its failure means;
- request_record.py: what one request did, for the access log.
"""

from serve_app.ingress.gateway.callers import ANONYMOUS, Caller
from serve_app.ingress.gateway.orchestrator import Gateway
from serve_app.ingress.gateway.reply import ChunkStream, Reply

__all__ = ["ANONYMOUS", "Caller", "ChunkStream", "Gateway", "Reply"]
