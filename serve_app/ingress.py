"""The HTTP face: OpenAI routes on FastAPI, served by the Ingress deployment.

Routes stay thin: parse (FastAPI + the protocol models), find the model through the
directory, call it, shape the response. Errors are raised as APIError and rendered by the
handlers in errors.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from .config import INGRESS_DEPLOYMENT_NAME, IngressArgs
from .errors import install_error_handlers
from .http import build_middleware, json_response, sse_response
from .model_directory import ModelDirectory, connect_serve_model, list_serve_model_apps
from .protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ModelList,
    OpenAIRequest,
)

logger = logging.getLogger("ray.serve")


def _note_unknown_fields(request: OpenAIRequest, route: str) -> None:
    unknown = request.unknown_fields()
    if unknown:
        logger.info("%s: ignoring unknown request fields %s", route, unknown)


def create_app(directory: ModelDirectory, args: IngressArgs) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        directory.start()
        try:
            yield
        finally:
            await directory.stop()

    app = FastAPI(title="hfserve", version="0.1.0", docs_url="/docs", redoc_url=None, lifespan=lifespan)
    install_error_handlers(app)
    build_middleware(app, max_request_body_bytes=args.max_request_body_bytes)
    started = time.time()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest):
        _note_unknown_fields(body, "/v1/chat/completions")
        model = await directory.client_for(body.model, "chat")
        if body.stream:
            return await sse_response(model.chat_stream(body))
        return json_response(await model.chat(body))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        _note_unknown_fields(body, "/v1/completions")
        model = await directory.client_for(body.model, "complete")
        if body.stream:
            return await sse_response(model.complete_stream(body))
        return json_response(await model.complete(body))

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest):
        _note_unknown_fields(body, "/v1/embeddings")
        model = await directory.client_for(body.model, "embed")
        return json_response(await model.embed(body))

    @app.get("/v1/models")
    async def list_models():
        return json_response(ModelList(data=await directory.cards()))

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str):
        return json_response(await directory.card(model_id))

    @app.get("/health")
    async def health():
        return {"status": "ok", "uptime_s": round(time.time() - started, 1)}

    @app.get("/ready")
    async def ready():
        await directory.refresh(max_age_s=0.5)
        models = {card.id: card.status for card in await directory.cards()}
        waiting = sorted(model for model, status in models.items() if status != "ready")
        if models and not waiting:
            return {"status": "ready", "models": models}
        message = "No models are deployed." if not models else "Models not ready: " + ", ".join(
            f"{m} ({models[m]})" for m in waiting
        )
        body = {
            "error": {"message": message, "type": "service_unavailable", "param": None, "code": "models_not_ready"},
            "status": "not_ready",
            "models": models,
            "not_ready": waiting,
        }
        return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})

    @app.get("/status")
    async def status(request: Request):
        entries = directory.entries()

        async def stats(entry):
            if entry.status != "ready" or entry.client is None:
                return None
            try:
                return (await asyncio.wait_for(entry.client.stats(), 2.0)).model_dump()
            except Exception:  # noqa: BLE001 - a busy model still gets listed
                return None

        engine_stats = await asyncio.gather(*(stats(e) for e in entries))
        return {
            "uptime_s": round(time.time() - started, 1),
            "models": [
                {
                    **entry.card().model_dump(),
                    "message": entry.message or None,
                    "backend": entry.info.backend if entry.info else None,
                    "device": entry.info.device if entry.info else None,
                    "source": entry.info.source if entry.info else None,
                    "max_model_len": entry.info.max_model_len if entry.info else None,
                    "engine": engine,
                }
                for entry, engine in zip(entries, engine_stats, strict=True)
            ],
        }

    return app


@serve.deployment(
    name=INGRESS_DEPLOYMENT_NAME,
    ray_actor_options={"num_cpus": 0.1},
    max_ongoing_requests=512,
)
@serve.ingress()
class Ingress:
    def __init__(self, args: IngressArgs):
        self.args = args
        self.directory = ModelDirectory(
            list_serve_model_apps,
            connect_serve_model,
            ttl_s=args.model_info_ttl_s,
            info_timeout_s=args.readiness_timeout_s,
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self.directory, self.args)
