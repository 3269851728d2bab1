"""JSON Schema for the rules that validators enforce, so the OpenAPI document describes what
the server really accepts (schemathesis checks both directions: what the schema allows is
accepted, what it forbids is refused).

A field whose rule pydantic cannot express keeps its validator (for the message that names
the field) and declares the same rule as its schema with `exactly(...)`; rules across fields
go in the model's schema as JSON Schema `if`/`then` clauses.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field, WithJsonSchema


def _integral(value: Any) -> Any:
    # JSON Schema's "integer" includes 2.0 (a number with no fraction); strict pydantic does not.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def integer(**constraints: Any) -> Any:
    """An integer as JSON Schema means it, for request models that are otherwise strict: 2 and
    2.0, never "2", 2.5 or true. The constraints (ge, le, ...) go before the conversion, where
    pydantic writes them into the schema as minimum and maximum."""
    return Annotated[int, Field(**constraints), BeforeValidator(_integral)]


def exactly(schema: dict[str, Any], *, nullable: bool = True) -> WithJsonSchema:
    """The field's schema is `schema` (or null, unless `nullable` is False)."""
    return WithJsonSchema({"anyOf": [schema, {"type": "null"}]} if nullable else schema)


STREAM_OPTIONS_NEED_STREAM: dict[str, Any] = {
    "if": {"properties": {"stream_options": {"type": "object"}}, "required": ["stream_options"]},
    "then": {"properties": {"stream": {"const": True}}, "required": ["stream"]},
}


def with_rules(*rules: dict[str, Any]):
    """A `json_schema_extra` that adds `rules` to the model's schema under allOf."""

    def extra(schema: dict[str, Any]) -> None:
        schema.setdefault("allOf", []).extend(rules)

    return extra
