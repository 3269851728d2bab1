"""Admin API for teams: /admin/teams (create, list, read, update, delete) and their member keys
(/admin/teams/{id}/keys). A key's team applies within `key_cache_ttl_s`, as a key update."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from contract.errors import NotFoundError
from serve_app.ingress.gateway import Gateway
from serve_app.ingress.http.openapi import responses
from serve_app.ingress.http.requests import TextSafeRoute
from serve_app.ingress.routes.admin import ADMIN_ERRORS, ask
from serve_app.state.teams import NewTeam, TeamMembers, TeamRecord, TeamUpdate


class TeamList(BaseModel):
    object: Literal["list"] = "list"
    data: list[TeamRecord]


def found(record: TeamRecord | None, team_id: str) -> dict:
    if record is None:
        raise NotFoundError(f"No team with id '{team_id}'.", param="team_id")
    return record.model_dump()


def teams_router(gateway: Gateway) -> APIRouter:
    router = APIRouter(prefix="/admin/teams", route_class=TextSafeRoute)
    state = gateway.state

    @router.post("", status_code=201, response_model=TeamRecord, responses={**ADMIN_ERRORS, **responses(400, 404, 409, 413)})
    async def create_team(body: NewTeam) -> dict:
        """A team: model access, RPM, TPM and a token budget that its keys share (each key's own
        limits apply too: the stricter wins). `keys` makes keys members at once; a key in
        another team is a 409, an unknown one a 404, and then no team is created."""
        return (await ask(state.create_team(body, timeout_s=5.0))).model_dump()

    @router.get("", response_model=TeamList, responses=ADMIN_ERRORS)
    async def list_teams() -> dict:
        return {"object": "list", "data": [team.model_dump() for team in await ask(state.list_teams(timeout_s=5.0))]}

    @router.get("/{team_id}", response_model=TeamRecord, responses={**ADMIN_ERRORS, **responses(404)})
    async def get_team(team_id: str) -> dict:
        return found(await ask(state.get_team(team_id, timeout_s=5.0)), team_id)

    @router.patch("/{team_id}", response_model=TeamRecord, responses={**ADMIN_ERRORS, **responses(400, 404, 413)})
    async def update_team(team_id: str, body: TeamUpdate) -> dict:
        """Change a team's name, models, limits, budget or metadata; null removes a limit."""
        return found(await ask(state.update_team(team_id, body, timeout_s=5.0)), team_id)

    @router.delete("/{team_id}", response_model=TeamRecord, responses={**ADMIN_ERRORS, **responses(404)})
    async def delete_team(team_id: str) -> dict:
        """Delete the team; its keys stay, in no team, with their own limits."""
        return found(await ask(state.delete_team(team_id, timeout_s=5.0)), team_id)

    @router.post("/{team_id}/keys", response_model=TeamRecord, responses={**ADMIN_ERRORS, **responses(400, 404, 409, 413)})
    async def add_keys(team_id: str, body: TeamMembers) -> dict:
        """Make keys members: all of them, or none when one is unknown (404) or in another team (409)."""
        return found(await ask(state.add_team_keys(team_id, body, timeout_s=5.0)), team_id)

    @router.delete("/{team_id}/keys/{key_id}", response_model=TeamRecord, responses={**ADMIN_ERRORS, **responses(404)})
    async def remove_key(team_id: str, key_id: str) -> dict:
        """Take a key out of the team: it keeps its own limits."""
        return found(await ask(state.remove_team_key(team_id, key_id, timeout_s=5.0)), team_id)

    return router
