"""Run-time model aliases: PUT and DELETE /models/aliases/{alias}. The checks that need the
directory (the model exists; neither name is a config alias or a model) are here; the state
actor stores the alias in the same versioned snapshot as the run-time models' records."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field

from contract.config import MODEL_ID_PATTERN, valid_model_id
from contract.errors import ConflictError, InvalidRequestError, ModelNotFoundError, NotFoundError
from serve_app.ingress.model_directory import ModelDirectory
from serve_app.state.client import StateClient

AliasName = Annotated[str, Path(pattern=MODEL_ID_PATTERN, description="The name clients send (a model id's characters).")]


class AliasTarget(BaseModel):
    """The body of PUT /models/aliases/{alias}."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: Annotated[str, Field(pattern=MODEL_ID_PATTERN, description="The model the alias names (not an alias).")]


class AliasList(BaseModel):
    object: str = "list"
    data: list[dict[str, str]]  # {"alias", "model", "source": "config" | "runtime"}


def check_alias_name(alias: str, directory: ModelDirectory) -> None:
    if not valid_model_id(alias):
        raise InvalidRequestError(f"'{alias}' is not a valid alias: use the characters of a model id.", param="alias")
    if alias in directory.config_aliases:
        raise ConflictError(f"Alias '{alias}' comes from the config file; deploy a config that changes it.",
                            param="alias", code="alias_from_config")
    if alias in directory.runtime or directory.status_of(alias) is not None:
        raise ConflictError(f"'{alias}' is a model's id, so it cannot be an alias.", param="alias", code="model_exists")


async def set_alias(alias: str, body: AliasTarget, *, directory: ModelDirectory, state: StateClient) -> dict[str, Any]:
    """Point `alias` at `body.model` (a new alias, or one re-pointed): requests in flight finish on
    the model they reached, and every ingress replica routes to the new one from its next sync."""
    await directory.refresh(max_age_s=0.5)
    check_alias_name(alias, directory)
    if body.model in directory.aliases:  # a conflict with the state, as an alias cycle would be
        raise ConflictError(f"'{body.model}' is an alias itself; point '{alias}' at a model.", param="model",
                            code="alias_of_alias")
    if directory.status_of(body.model) is None and body.model not in directory.runtime:
        raise ModelNotFoundError(body.model)
    result = await state.alias_set(alias, body.model, timeout_s=5.0)
    if "error" in result:
        error = result["error"]
        raise ConflictError(error["message"], param=error["param"], code=error["code"])
    directory.runtime_aliases[alias] = body.model  # this replica at once; the others at their next sync
    return result


async def delete_alias(alias: str, *, directory: ModelDirectory, state: StateClient) -> dict[str, Any]:
    if alias in directory.config_aliases:
        raise ConflictError(f"Alias '{alias}' comes from the config file; deploy a config without it.", param="alias",
                            code="alias_from_config")
    if not await state.alias_delete(alias, timeout_s=5.0):
        raise NotFoundError(f"No run-time alias '{alias}'.", param="alias")
    directory.runtime_aliases.pop(alias, None)
    return {"alias": alias, "deleted": True}


def list_aliases(directory: ModelDirectory) -> AliasList:
    rows = [{"alias": alias, "model": target, "source": "config" if alias in directory.config_aliases else "runtime"}
            for alias, target in sorted(directory.aliases.items())]
    return AliasList(data=rows)
