"""The HTTP adapter of the ingress: error rendering (errors.py), JSON and SSE responses
(responses.py) and the middleware stack in its order (middleware.py)."""
