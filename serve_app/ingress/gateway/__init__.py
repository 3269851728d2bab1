"""The gateway: API keys, per-key model access, rate limits, the response cache and circuit
breakers between the parsed request and the model. HTTP-free; serve_app/ingress/http and
serve_app/ingress/routes adapt it to HTTP.

- callers.py: who is calling (keys, open and admin paths);
- quota.py: leased rate limits, token reservation and settlement, rate-limit headers;
- cache_client.py, breakers.py, usage.py: replica-side copies of the shared state;
- failures.py: what a failed model call means for the client and the breaker;
- generation.py: what differs between chat and completions, one spec each;
- embeddings.py: the per-input cached embeddings flow;
- orchestrator.py: the Gateway that runs each request through them;
- reply.py: what it answers.
"""

from serve_app.ingress.gateway.callers import ANONYMOUS, Caller
from serve_app.ingress.gateway.orchestrator import Gateway
from serve_app.ingress.gateway.reply import ChunkStream, Reply

__all__ = ["ANONYMOUS", "Caller", "ChunkStream", "Gateway", "Reply"]
