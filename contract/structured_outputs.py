"""Structured outputs: OpenAI's `response_format` and vLLM's `structured_outputs` extra, each
reduced to one Constraint (a JSON schema, a regex or an EBNF grammar) that the engines enforce
token by token while sampling. Whether a constraint compiles is the replica's check
(deployments/grammars.py), so a bad one is a 400 naming the field it came in."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_CHOICES = 256

# response_format's JSON types and structured_outputs are two ways to ask for one thing: not both.
ONE_STRUCTURED_OUTPUT: dict[str, Any] = {"not": {
    "properties": {"response_format": {"type": "object", "properties": {"type": {"enum": ["json_object", "json_schema"]}},
                                       "required": ["type"]},
                   "structured_outputs": {"type": "object"}},
    "required": ["response_format", "structured_outputs"]}}


@dataclass(frozen=True)
class Constraint:
    """What the output must match, enforced while sampling: a JSON schema (as JSON text), a
    regex, or an EBNF grammar (xgrammar's dialect, which OpenVINO GenAI also takes)."""

    kind: Literal["json_schema", "regex", "grammar"]
    spec: str


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


# Optional fields without null: a field given is given a value (the schema says so, and the
# rules below count the fields given).


class JSONSchemaFormat(_Strict):
    name: str = Field(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    model_config = ConfigDict(json_schema_extra={
        "if": {"properties": {"type": {"const": "json_schema"}}, "required": ["type"]},
        "then": {"required": ["json_schema"]}, "else": {"not": {"required": ["json_schema"]}}})

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat = None  # type: ignore[assignment]

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type 'json_schema', and only then")
        return self

    def constraint(self) -> Constraint | None:
        if self.type == "json_object":
            return Constraint("json_schema", json.dumps({"type": "object"}))
        if self.type == "json_schema":
            assert self.json_schema is not None
            return Constraint("json_schema", json.dumps(self.json_schema.schema_ or {}))
        return None


class StructuredOutputs(_Strict):
    """vLLM's structured_outputs: exactly one of a JSON schema, a regex, a choice of strings or an
    EBNF grammar (xgrammar's dialect, as vLLM takes it)."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1, "maxProperties": 1})

    json_: dict[str, Any] | str = Field(None, alias="json")  # type: ignore[assignment]
    regex: str = Field(None, min_length=1)  # type: ignore[assignment]
    choice: list[str] = Field(None, min_length=1, max_length=MAX_CHOICES)  # type: ignore[assignment]
    grammar: str = Field(None, min_length=1)  # type: ignore[assignment]

    @model_validator(mode="after")
    def _exactly_one(self) -> StructuredOutputs:
        given = [name for name in ("json_", "regex", "choice", "grammar") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of json, regex, choice and grammar")
        return self

    def constraint(self) -> Constraint:
        if self.json_ is not None:
            return Constraint("json_schema", self.json_ if isinstance(self.json_, str) else json.dumps(self.json_))
        if self.regex is not None:
            return Constraint("regex", self.regex)
        if self.choice is not None:  # one literal per choice; json.dumps gives EBNF's string escapes
            return Constraint("grammar", "root ::= " + " | ".join(json.dumps(choice) for choice in self.choice))
        assert self.grammar is not None
        return Constraint("grammar", self.grammar)
