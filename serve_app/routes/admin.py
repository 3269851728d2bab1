"""Admin API: /admin/keys. The auth middleware admits only admin keys to /admin."""

from __future__ import annotations

from fastapi import APIRouter

from contract.errors import NotFoundError, ServiceUnavailableError

from ..auth import KeyRecord, NewKey
from ..gateway import Gateway
from ..state import StateUnavailable


def admin_router(gateway: Gateway) -> APIRouter:
    router = APIRouter(prefix="/admin")

    async def call(method: str, *args):
        try:
            return await gateway.state.call(method, *args, timeout_s=5.0)
        except StateUnavailable:
            raise ServiceUnavailableError("The key store is restarting; retry shortly.", code="state_unavailable") from None

    @router.post("/keys", status_code=201)
    async def create_key(body: NewKey) -> dict:
        key, record = await call("create_key", body)
        return {"key": key, **record.model_dump()}  # the only time the key is shown

    @router.get("/keys")
    async def list_keys() -> dict:
        records: list[KeyRecord] = await call("list_keys")
        return {"object": "list", "data": [record.model_dump() for record in records]}

    async def one_key(method: str, key_id: str) -> dict:
        record: KeyRecord | None = await call(method, key_id)
        if record is None:
            raise NotFoundError(f"No API key with id '{key_id}'.", param="key_id")
        return record.model_dump()

    @router.get("/keys/{key_id}")
    async def get_key(key_id: str) -> dict:
        return await one_key("get_key", key_id)

    @router.delete("/keys/{key_id}")
    async def revoke_key(key_id: str) -> dict:
        return await one_key("revoke_key", key_id)

    return router
