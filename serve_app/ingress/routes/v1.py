"""The OpenAI API: /v1/chat/completions, /v1/completions, /v1/embeddings and /v1/models, and the
endpoints beside it: /v1/rerank (also /rerank), /v1/classify, and vLLM's /tokenize, /detokenize."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from starlette.responses import Response

from contract.embedding_protocol import EmbeddingRequest
from contract.endpoints import CHAT, CLASSIFY, COMPLETE, DETOKENIZE, EMBED, RERANK, TOKENIZE
from contract.errors import ModelNotFoundError
from contract.model_cards import ModelCard, ModelList
from contract.protocol import ChatCompletionRequest, CompletionRequest, OpenAIRequest
from contract.scoring_protocol import ClassificationRequest, RerankRequest
from contract.tokenize_protocol import DetokenizeRequest, TokenizeRequest
from serve_app.ingress.gateway import Gateway
from serve_app.ingress.http.openapi import responses, streamed
from serve_app.ingress.http.requests import TextSafeRoute
from serve_app.ingress.http.responses import json_response, respond
from serve_app.ingress.model_directory import public_card

logger = logging.getLogger("ray.serve")


MAX_LOGGED_FIELDS = 8
MAX_LOGGED_NAME = 64


def _note_unknown_fields(body: OpenAIRequest, path: str) -> None:
    """Log the names (never the values) of fields we ignore, truncated: a client controls them."""
    unknown = body.unknown_fields()
    if unknown:
        names = [name if len(name) <= MAX_LOGGED_NAME else name[:MAX_LOGGED_NAME] + "..." for name in unknown[:MAX_LOGGED_FIELDS]]
        more = f" and {len(unknown) - MAX_LOGGED_FIELDS} more" if len(unknown) > MAX_LOGGED_FIELDS else ""
        logger.info("%s: ignoring unknown request fields %s%s", path, names, more)


def _no_cache(request: Request) -> bool:
    return "no-cache" in request.headers.get("cache-control", "").lower()


# What the model endpoints answer besides 200: every error status a request can meet.
MODEL_CALL_ERRORS = responses(400, 401, 404, 413, 429, 431, 503, 504)


def openai_router(gateway: Gateway) -> APIRouter:
    router = APIRouter(route_class=TextSafeRoute)
    directory = gateway.directory

    @router.post(CHAT.path, response_model=CHAT.response, responses={**streamed(CHAT), **MODEL_CALL_ERRORS})
    async def chat_completions(request: Request, body: ChatCompletionRequest) -> Response:
        _note_unknown_fields(body, CHAT.path)
        return await respond(await gateway.chat(request.state.caller, body, no_cache=_no_cache(request)))

    @router.post(COMPLETE.path, response_model=COMPLETE.response, responses={**streamed(COMPLETE), **MODEL_CALL_ERRORS})
    async def completions(request: Request, body: CompletionRequest) -> Response:
        _note_unknown_fields(body, COMPLETE.path)
        return await respond(await gateway.complete(request.state.caller, body, no_cache=_no_cache(request)))

    @router.post(EMBED.path, response_model=EMBED.response, responses=MODEL_CALL_ERRORS)
    async def embeddings(request: Request, body: EmbeddingRequest) -> Response:
        _note_unknown_fields(body, EMBED.path)
        return await respond(await gateway.embed(request.state.caller, body, no_cache=_no_cache(request)))

    async def rerank(request: Request, body: RerankRequest) -> Response:
        _note_unknown_fields(body, RERANK.path)
        return await respond(await gateway.rerank(request.state.caller, body, no_cache=_no_cache(request)))

    for path in (RERANK.path, *RERANK.aliases):  # operation ids differ by path: rerank_v1_rerank_post, rerank_rerank_post
        router.add_api_route(path, rerank, methods=["POST"], response_model=RERANK.response, responses=MODEL_CALL_ERRORS)

    @router.post(CLASSIFY.path, response_model=CLASSIFY.response, responses=MODEL_CALL_ERRORS)
    async def classify(request: Request, body: ClassificationRequest) -> Response:
        _note_unknown_fields(body, CLASSIFY.path)
        return await respond(await gateway.classify(request.state.caller, body, no_cache=_no_cache(request)))

    # Unknown fields are refused (extra="forbid"), and no response cache: nothing to log or skip.
    @router.post(TOKENIZE.path, response_model=TOKENIZE.response, responses=MODEL_CALL_ERRORS)
    async def tokenize(request: Request, body: TokenizeRequest) -> Response:
        return await respond(await gateway.tokenize(request.state.caller, body))

    @router.post(DETOKENIZE.path, response_model=DETOKENIZE.response, responses=MODEL_CALL_ERRORS)
    async def detokenize(request: Request, body: DetokenizeRequest) -> Response:
        return await respond(await gateway.detokenize(request.state.caller, body))

    def shown_card(caller, card: ModelCard) -> ModelCard:
        """The card with the breaker's say in its status; the error's detail for admins only."""
        card = card.model_copy(update={"status": gateway.model_status(card.status, card.id)})
        return card if caller.admin else public_card(card)

    def alias_card(alias: str, card: ModelCard) -> ModelCard:
        return card.model_copy(update={"id": alias, "alias_of": card.id})

    @router.get("/v1/models", response_model=ModelList, responses=responses(401, 431))
    async def list_models(request: Request) -> Response:
        """Every model the key may use, then every alias of one (`alias_of` names its model)."""
        caller = request.state.caller
        cards = {card.id: card for card in await directory.cards()}
        aliases = [alias_card(alias, cards[target]) for alias, target in sorted(directory.aliases.items())
                   if target in cards and caller.may_use(alias, target)]
        return json_response(ModelList(data=[shown_card(caller, card) for card in (*cards.values(), *aliases)
                                             if card.alias_of is not None or caller.may_use(card.id)]))

    @router.get("/v1/models/{model_id}", response_model=ModelCard, responses=responses(401, 404, 431))
    async def get_model(request: Request, model_id: str) -> Response:
        caller = request.state.caller
        target = directory.aliases.get(model_id)
        if target is not None and caller.may_use(model_id, target):
            return json_response(shown_card(caller, alias_card(model_id, await directory.card(target))))
        if not caller.may_use(model_id):
            raise ModelNotFoundError(model_id)
        return json_response(shown_card(caller, await directory.card(model_id)))

    return router
