"""The OpenAI API: /v1/chat/completions, /v1/completions, /v1/embeddings and /v1/models."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from starlette.responses import Response

from contract.endpoints import CHAT, COMPLETE, EMBED
from contract.errors import ModelNotFoundError
from contract.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ModelList,
    OpenAIRequest,
)

from ..gateway import Gateway
from ..http.responses import json_response, respond

logger = logging.getLogger("ray.serve")


def _note_unknown_fields(body: OpenAIRequest, path: str) -> None:
    unknown = body.unknown_fields()
    if unknown:
        logger.info("%s: ignoring unknown request fields %s", path, unknown)


def _no_cache(request: Request) -> bool:
    return "no-cache" in request.headers.get("cache-control", "").lower()


def openai_router(gateway: Gateway) -> APIRouter:
    router = APIRouter()
    directory = gateway.directory

    @router.post(CHAT.path)
    async def chat_completions(request: Request, body: ChatCompletionRequest) -> Response:
        _note_unknown_fields(body, CHAT.path)
        return await respond(await gateway.chat(request.state.caller, body, no_cache=_no_cache(request)))

    @router.post(COMPLETE.path)
    async def completions(request: Request, body: CompletionRequest) -> Response:
        _note_unknown_fields(body, COMPLETE.path)
        return await respond(await gateway.complete(request.state.caller, body, no_cache=_no_cache(request)))

    @router.post(EMBED.path)
    async def embeddings(request: Request, body: EmbeddingRequest) -> Response:
        _note_unknown_fields(body, EMBED.path)
        return await respond(await gateway.embed(request.state.caller, body, no_cache=_no_cache(request)))

    @router.get("/v1/models")
    async def list_models(request: Request) -> Response:
        caller = request.state.caller
        cards = [
            card.model_copy(update={"status": gateway.model_status(card.status, card.id)})
            for card in await directory.cards()
            if caller.may_use(card.id)
        ]
        return json_response(ModelList(data=cards))

    @router.get("/v1/models/{model_id}")
    async def get_model(request: Request, model_id: str) -> Response:
        if not request.state.caller.may_use(model_id):
            raise ModelNotFoundError(model_id)
        card = await directory.card(model_id)
        return json_response(card.model_copy(update={"status": gateway.model_status(card.status, card.id)}))

    return router
