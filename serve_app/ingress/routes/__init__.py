"""The ingress's routes, each a thin function: parse (FastAPI and the protocol models), call
the gateway or the directory, shape the response. One router per audience: the OpenAI API
(openai_api.py), operations (operations.py: /health, /ready, /status) and the admin API
(admin.py)."""
