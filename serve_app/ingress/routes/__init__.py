"""The ingress's routes, each a thin function: parse (FastAPI and the protocol models), call
the gateway or the directory, shape the response. One router per audience: the OpenAI API
(v1.py), operations (operations.py: /health, /ready, /status, /metrics), the admin API
(admin.py) and run-time models (models.py)."""
