"""Config names renamed in this release and still accepted for one more.

A renamed field lists its old name after its own in `validation_alias=AliasChoices(new, old)`.
`check_old_names` reads them from there: giving both names is an error, and each use of an old
name logs one deprecation warning naming the new one (logger "ray.serve", as the replicas log).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

from pydantic import AliasChoices, BaseModel, model_validator

logger = logging.getLogger("ray.serve")


@functools.cache
def old_names(model: type[BaseModel]) -> dict[str, str]:
    """Old name -> field name, from the fields' validation aliases."""
    renamed: dict[str, str] = {}
    for name, field in model.model_fields.items():
        if isinstance(field.validation_alias, AliasChoices):
            renamed.update({old: name for old in field.validation_alias.choices if isinstance(old, str) and old != name})
    return renamed


def check_old_names(model: type[BaseModel], data: Any) -> Any:
    """A model_validator(mode="before"): `data` unchanged, once its old names are checked."""
    if not isinstance(data, Mapping):
        return data
    for old, new in old_names(model).items():
        if old in data:
            deprecated(old, new, both=new in data)
    return data


class TakesOldNames(BaseModel):
    """A config model whose renamed fields still take their old names."""

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        return check_old_names(cls, data)


def deprecated(old: str, new: str, both: bool, unit_note: str = "") -> None:
    """Refuse an old name given beside its new one; else log one warning naming the new one."""
    if both:
        raise ValueError(f"`{new}` and `{old}` are both set: `{old}` is the old name of `{new}`{unit_note}; "
                         f"keep `{new}` only")
    logger.warning("`%s` is a deprecated name, accepted for one more release: use `%s`%s", old, new, unit_note)
