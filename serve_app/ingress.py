"""The HTTP face: OpenAI routes on FastAPI, served by the Ingress deployment.

Routes stay thin: FastAPI + the protocol models parse, the gateway (auth, access, rate
limits, cache, breakers) calls the model, and errors are raised as APIError and rendered by
the handlers in errors.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from .admin import admin_router
from .config import INGRESS_DEPLOYMENT_NAME, IngressArgs
from .errors import install_error_handlers
from .gateway import Gateway, GatewayMiddleware
from .http import build_middleware, json_response
from .model_directory import ModelDirectory, connect_serve_model, list_serve_model_apps
from .protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ModelList,
    OpenAIRequest,
)
from .state import StateClient, StateSettings, StateUnavailable

logger = logging.getLogger("ray.serve")


def _note_unknown_fields(request: OpenAIRequest, route: str) -> None:
    unknown = request.unknown_fields()
    if unknown:
        logger.info("%s: ignoring unknown request fields %s", route, unknown)


def create_app(gateway: Gateway, args: IngressArgs) -> FastAPI:
    directory = gateway.directory

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        directory.start()
        gateway.start()
        try:
            yield
        finally:
            await gateway.stop()
            await directory.stop()

    app = FastAPI(title="hfserve", version="0.1.0", docs_url="/docs", redoc_url=None, lifespan=lifespan)
    install_error_handlers(app)
    build_middleware(app, max_request_body_bytes=args.max_request_body_bytes)
    app.add_middleware(GatewayMiddleware, gateway=gateway)  # added last: runs first
    app.include_router(admin_router(gateway))
    started = time.time()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, body: ChatCompletionRequest):
        _note_unknown_fields(body, "/v1/chat/completions")
        return await gateway.generate(request.headers, request.state.caller, body, "chat", request.scope["state"])

    @app.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest):
        _note_unknown_fields(body, "/v1/completions")
        return await gateway.generate(request.headers, request.state.caller, body, "complete", request.scope["state"])

    @app.post("/v1/embeddings")
    async def embeddings(request: Request, body: EmbeddingRequest):
        _note_unknown_fields(body, "/v1/embeddings")
        return await gateway.embed(request.headers, request.state.caller, body, request.scope["state"])

    @app.get("/v1/models")
    async def list_models(request: Request):
        caller = request.state.caller
        cards = [
            card.model_copy(update={"status": gateway.model_status(card.status, card.id)})
            for card in await directory.cards()
            if caller.may_use(card.id)
        ]
        return json_response(ModelList(data=cards))

    @app.get("/v1/models/{model_id}")
    async def get_model(request: Request, model_id: str):
        from .errors import ModelNotFoundError

        if not request.state.caller.may_use(model_id):
            raise ModelNotFoundError(model_id)
        card = await directory.card(model_id)
        return json_response(card.model_copy(update={"status": gateway.model_status(card.status, card.id)}))

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
    async def status():
        entries = directory.entries()

        async def stats(entry):
            if entry.status != "ready" or entry.client is None:
                return None
            try:
                return (await asyncio.wait_for(entry.client.stats(), 2.0)).model_dump()
            except Exception:  # noqa: BLE001 - a busy model still gets listed
                return None

        engine_stats = await asyncio.gather(*(stats(e) for e in entries))
        try:
            shared = await gateway.state.call("status")
        except StateUnavailable:
            shared = {"error": "the state actor is restarting"}
        return {
            "uptime_s": round(time.time() - started, 1),
            "models": [
                {
                    **entry.card().model_dump(),
                    "status": gateway.model_status(entry.status, entry.id),
                    "message": entry.message or None,
                    "backend": entry.info.backend if entry.info else None,
                    "device": entry.info.device if entry.info else None,
                    "source": entry.info.source if entry.info else None,
                    "max_model_len": entry.info.max_model_len if entry.info else None,
                    "circuit_breaker": shared.get("breakers", {}).get(entry.id, {"state": "closed"}),
                    "engine": engine,
                }
                for entry, engine in zip(entries, engine_stats, strict=True)
            ],
            "cache": shared.get("cache"),
            "state": {"uptime_s": shared.get("uptime_s"), "error": shared.get("error")},
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
        state = StateClient.ray_actor(state_settings(args))
        directory = ModelDirectory(
            list_serve_model_apps,
            connect_serve_model,
            ttl_s=args.model_info_ttl_s,
            info_timeout_s=args.readiness_timeout_s,
            on_reload=lambda model: _quietly(state.call("cache_invalidate", model)),
        )
        self.gateway = Gateway(args, state, directory)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self.gateway, self.args)


async def _quietly(call) -> None:
    with contextlib.suppress(StateUnavailable):
        await call


def state_settings(args: IngressArgs) -> StateSettings:
    return StateSettings(
        state_dir=args.effective_state_dir,
        static_admin=args.static_admin_key_sha256 is not None,
        cache_max_entries=args.cache_max_size,
        cache_max_bytes=args.cache_max_bytes,
        cache_ttl_s=args.cache_ttl_seconds,
        breaker_threshold=args.circuit_breaker_threshold,
        breaker_timeout_s=args.circuit_breaker_timeout_seconds,
    )
