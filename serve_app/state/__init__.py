"""The state actor and what it owns: API keys (keys.py), rate limits (rate_limiter.py), the
response cache (response_cache.py), circuit breakers (circuit_breaker.py) and the run-time
model records with their reconciler (lifecycle/)."""
