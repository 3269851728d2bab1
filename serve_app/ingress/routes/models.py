"""Run-time model lifecycle: POST /models/load, POST /models/unload, GET /models, and model
aliases under /models/aliases (admin only, like /admin). The work is in
serve_app/ingress/model_loads.py, model_aliases.py and serve_app/state/lifecycle/."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from contract.errors import ServiceUnavailableError
from contract.lifecycle import (
    LifecycleReply,
    LoadModelRequest,
    RuntimeModel,
    RuntimeModelList,
    UnloadModelRequest,
)
from serve_app.ingress import model_aliases, model_loads
from serve_app.ingress.gateway import Gateway
from serve_app.ingress.http.openapi import responses
from serve_app.ingress.http.requests import TextSafeRoute
from serve_app.ingress.model_aliases import AliasList, AliasName, AliasTarget
from serve_app.state.client import StateUnavailable

ERRORS = responses(400, 401, 403, 404, 409, 413, 431, 503)


def models_router(gateway: Gateway) -> APIRouter:
    router = APIRouter(prefix="/models", route_class=TextSafeRoute)

    async def state_call(run):
        try:
            return await run
        except StateUnavailable:
            raise ServiceUnavailableError("The model registry is restarting; retry shortly.",
                                          code="state_unavailable") from None

    @router.post("/load", status_code=202, response_model=LifecycleReply, responses=ERRORS)
    async def load(body: LoadModelRequest):
        """Load a model at run time: 202 `loading` (200 `ready` when the same load already
        finished); /v1/models shows it `loading`, then `ready` or `failed` with the error."""
        status, reply = await state_call(model_loads.load(
            body, args_cfg=gateway.args, directory=gateway.directory, state=gateway.state,
            node_reports=gateway.node_reports, used=gateway.last_used))
        return JSONResponse(reply.model_dump(mode="json"), status_code=status)

    @router.post("/unload", status_code=202, response_model=LifecycleReply, responses=ERRORS)
    async def unload(body: UnloadModelRequest):
        """Stop new requests to a run-time model, let the ones in flight finish, then delete it."""
        return await state_call(model_loads.unload(body.model, directory=gateway.directory, state=gateway.state))

    @router.get("/aliases", response_model=AliasList, responses=responses(401, 403, 431))
    async def list_aliases():
        """Every alias with its model, and whether it comes from the config file or was set at run time."""
        return model_aliases.list_aliases(gateway.directory)

    @router.put("/aliases/{alias}", responses=ERRORS)
    async def set_alias(alias: AliasName, body: AliasTarget):
        """Point an alias at a model (create or re-point). Requests in flight finish on the model
        they reached; every ingress replica sends new ones to the new model from its next sync."""
        return await state_call(model_aliases.set_alias(alias, body, directory=gateway.directory, state=gateway.state))

    @router.delete("/aliases/{alias}", responses=ERRORS)
    async def delete_alias(alias: AliasName):
        return await state_call(model_aliases.delete_alias(alias, directory=gateway.directory, state=gateway.state))

    @router.get("", response_model=RuntimeModelList, responses=responses(401, 403, 431, 503))
    async def list_models():
        """Every run-time model's record: its args, state, estimated memory, last use."""
        records = await state_call(gateway.state.models_list(timeout_s=5.0))
        data = [{**record, "load_seconds": RuntimeModel.model_validate(record).load_seconds} for record in records]
        return {"object": "list", "data": data}

    return router
