"""Admin API: /admin/keys (create, list, read, update, revoke) and /admin/usage (teams:
routes/teams.py). The auth middleware admits only admin keys to /admin."""

from __future__ import annotations

import csv
import datetime
import io
from collections.abc import Awaitable
from typing import Annotated, Literal, TypeVar

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from contract.errors import InvalidRequestError, NotFoundError, ServiceUnavailableError
from serve_app.ingress.gateway import Gateway
from serve_app.ingress.http.openapi import responses
from serve_app.ingress.http.requests import TextSafeRoute
from serve_app.state.client import StateUnavailable
from serve_app.state.keys import KeyRecord, KeyUpdate, NewKey
from serve_app.state.usage_book import COUNTS, GroupBy


class CreatedKey(KeyRecord):
    key: str  # shown this once; only its hash is stored


class UsageReport(BaseModel):
    object: Literal["list"] = "list"
    group_by: GroupBy
    data: list[dict[str, str | int | None]]  # {group_by: its value (a key in no team: null), requests, ...}


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KeyRecord]


ADMIN_ERRORS = responses(401, 403, 431, 503)
# A UTC day as YYYY-MM-DD; the schema's format says it must be a real date, which _day checks.
DAY = {"pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$", "json_schema_extra": {"format": "date"}}


def _day(value: str | None, param: str) -> str | None:
    if value is None:
        return None
    try:
        return datetime.date.fromisoformat(value).isoformat()
    except ValueError:
        raise InvalidRequestError(f"'{param}' is not a date (YYYY-MM-DD): {value!r}.", param=param) from None

T = TypeVar("T")


async def ask(call: Awaitable[T]) -> T:
    """The state's answer; a 503 while the state actor restarts."""
    try:
        return await call
    except StateUnavailable:
        raise ServiceUnavailableError("The key store is restarting; retry shortly.", code="state_unavailable") from None


def admin_router(gateway: Gateway) -> APIRouter:
    router = APIRouter(prefix="/admin", route_class=TextSafeRoute)

    def found(record: KeyRecord | None, key_id: str) -> dict:
        if record is None:
            raise NotFoundError(f"No API key with id '{key_id}'.", param="key_id")
        return record.model_dump()

    @router.post("/keys", status_code=201, response_model=CreatedKey, responses={**ADMIN_ERRORS, **responses(400, 413)})
    async def create_key(body: NewKey) -> dict:
        key, record = await ask(gateway.state.create_key(body, timeout_s=5.0))
        return {"key": key, **record.model_dump()}  # the only time the key is shown

    @router.get("/keys", response_model=KeyList, responses={**ADMIN_ERRORS, **responses(400)})
    async def list_keys(include_revoked: bool = False) -> dict:
        """Every key without its secret; revoked ones only with `include_revoked=true`."""
        records = await ask(gateway.state.list_keys(include_revoked, timeout_s=5.0))
        return {"object": "list", "data": [record.model_dump() for record in records]}

    @router.get("/keys/{key_id}", response_model=KeyRecord, responses={**ADMIN_ERRORS, **responses(404)})
    async def get_key(key_id: str) -> dict:
        return found(await ask(gateway.state.get_key(key_id, timeout_s=5.0)), key_id)

    @router.patch("/keys/{key_id}", response_model=KeyRecord, responses={**ADMIN_ERRORS, **responses(400, 404, 413)})
    async def update_key(key_id: str, body: KeyUpdate) -> dict:
        """Change a key's name, models, limits, expiry or metadata without rotating its secret.
        Every ingress replica applies it within `key_cache_ttl_s`, as a revocation. A revoked key
        is a 404 and stays as it was."""
        return found(await ask(gateway.state.update_key(key_id, body, timeout_s=5.0)), key_id)

    @router.delete("/keys/{key_id}", response_model=KeyRecord, responses={**ADMIN_ERRORS, **responses(404, 409)})
    async def revoke_key(key_id: str) -> dict:
        """Revoke the key: the answer is its final record; afterwards it is gone from this API
        (404), it stays listed with `include_revoked=true`, and using it is a 401. The last
        active admin key is a 409: create another first."""
        return found(await ask(gateway.state.revoke_key(key_id, timeout_s=5.0)), key_id)

    @router.get("/usage", response_model=UsageReport, responses={
        **ADMIN_ERRORS, **responses(400), 200: {"content": {"text/csv": {"schema": {"type": "string"}}}}})
    async def usage(request: Request, key: str | None = None, team: str | None = None, model: str | None = None,
                    from_: Annotated[str | None, Query(alias="from", **DAY)] = None,
                    to: Annotated[str | None, Query(**DAY)] = None, group_by: GroupBy = "day") -> Response:
        """Requests, prompt and completion tokens, errors and cache hits per key, team, model or
        UTC day (`group_by`), for one key (its id), team (its id) or model, over the days from
        `from` to `to` (inclusive); CSV with `Accept: text/csv`. A key counts for the team it
        is in now."""
        start, end = _day(from_, "from"), _day(to, "to")
        if start is not None and end is not None and start > end:
            raise InvalidRequestError("'from' is after 'to'.", param="from")
        rows = await ask(gateway.state.usage_report(group_by, key, model, start, end, team, timeout_s=10.0))
        if "text/csv" in request.headers.get("accept", ""):
            out = io.StringIO()
            writer = csv.DictWriter(out, fieldnames=[group_by, *COUNTS])
            writer.writeheader()
            writer.writerows(rows)
            return Response(out.getvalue(), media_type="text/csv")
        return JSONResponse(UsageReport(group_by=group_by, data=rows).model_dump())

    return router
