"""The OpenAPI document, made to tell the truth about the API:

- every route declares the error statuses it really answers, with the OpenAI error body
  (`responses(...)` below); FastAPI's 422, which this server never sends (validation errors
  are 400s), is removed with its schemas;
- API-key security is declared when keys are on, and lifted from the open paths;
- limits that come from the config (embedding inputs per request) are written into the
  request schemas.

schemathesis checks the document against the server (tests/integration/test_openapi.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from contract.embedding_protocol import MAX_EMBEDDING_INPUTS
from contract.endpoints import ENDPOINTS, Endpoint
from contract.errors import ErrorResponse
from contract.ingress_args import IngressArgs
from serve_app.ingress.gateway.callers import OPEN_PATHS

_MEANING = {
    400: "The request is invalid; `error.param` names the field.",
    401: "Missing, malformed, unknown, revoked or expired API key.",
    403: "The API key is not an admin key.",
    404: "No such model (or the key may not use it), or no such resource.",
    409: "The request clashes with the server's state: a name taken, a model still loading, no room to load.",
    413: "The request body is over `max_request_body_bytes`.",
    429: "A rate limit (requests or tokens per minute) is reached; see `Retry-After`.",
    431: "Too many request headers, or headers too large in total.",
    503: "The model is loading, overloaded, failing (circuit open) or unavailable; see `Retry-After`.",
    504: "The model did not answer within its `request_timeout_s`.",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route: these error statuses, each with the OpenAI error body."""
    return {status: {"model": ErrorResponse, "description": _MEANING[status]} for status in statuses}


def streamed(endpoint: Endpoint) -> dict[int | str, dict[str, Any]]:
    """The 200 of an endpoint that streams with `stream: true`: server-sent events whose data is
    a chunk (or an in-band error) as JSON, then `[DONE]`. schemathesis checks every event."""
    assert endpoint.chunk is not None
    chunk = {"$ref": f"#/components/schemas/{endpoint.chunk.__name__}"}
    error = {"$ref": f"#/components/schemas/{ErrorResponse.__name__}"}
    event = {
        "type": "object",
        "required": ["data"],
        "properties": {
            "event": {"type": "string"},
            "data": {"anyOf": [
                {"const": "[DONE]"},
                {"type": "string", "contentMediaType": "application/json", "contentSchema": {"anyOf": [chunk, error]}},
            ]},
        },
    }
    return {200: {"content": {"text/event-stream": {"schema": event}},
                  "description": "JSON; with `stream: true`, server-sent events ending with `data: [DONE]`."}}


def install_openapi(app: FastAPI, args: IngressArgs) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            _drop_fastapi_422(schema)
            _add_stream_models(schema)
            if args.enable_auth:
                _declare_api_keys(schema)
            _embedding_input_limit(schema, args.max_embedding_inputs)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _operations(schema: dict[str, Any]):
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            yield path, method, operation


def _drop_fastapi_422(schema: dict[str, Any]) -> None:
    for _, _, operation in _operations(schema):
        operation.get("responses", {}).pop("422", None)
    for name in ("HTTPValidationError", "ValidationError"):
        schema.get("components", {}).get("schemas", {}).pop(name, None)


def _add_stream_models(schema: dict[str, Any]) -> None:
    """The chunk models the event schemas refer to, which no route returns whole."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in {endpoint.chunk for endpoint in ENDPOINTS.values() if endpoint.chunk is not None} | {ErrorResponse}:
        if model.__name__ in components:
            continue
        generated = model.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
        for name, definition in generated.pop("$defs", {}).items():
            components.setdefault(name, definition)
        components[model.__name__] = generated


def _declare_api_keys(schema: dict[str, Any]) -> None:
    components = schema.setdefault("components", {})
    components["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <key>"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    }
    schema["security"] = [{"bearer": []}, {"apiKey": []}]
    for path, _, operation in _operations(schema):
        if path in OPEN_PATHS:
            operation["security"] = []


def _embedding_input_limit(schema: dict[str, Any], limit: int) -> None:
    """The config may allow fewer inputs per request than the protocol's MAX_EMBEDDING_INPUTS."""
    request = schema.get("components", {}).get("schemas", {}).get("EmbeddingRequest", {})
    for form in request.get("properties", {}).get("input", {}).get("anyOf", []):
        if form.get("maxItems") == MAX_EMBEDDING_INPUTS:
            form["maxItems"] = limit
