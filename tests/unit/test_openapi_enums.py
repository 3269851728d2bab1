"""The OpenAPI document states the enumerations the validators enforce (schemathesis's ST202: a
request the document allows must not be refused for a value it could have named): every value
the load request's schema lists is accepted, and one it does not list is refused. No Ray."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from contract import tasks
from contract.config import HARDWARE_PREFERENCE
from contract.lifecycle import LoadModelRequest
from tests.unit.fakes import make_app


@pytest.fixture
def load_schema(tmp_path, serve) -> dict:
    app, _, _ = make_app(tmp_path, serve, enable_auth=False)
    with TestClient(app) as client:
        document = client.get("/openapi.json").json()
    body = document["paths"]["/models/load"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("/LoadModelRequest")
    return document["components"]["schemas"]["LoadModelRequest"]["properties"]


def _branches(field: dict) -> dict[str, dict]:
    return {branch["type"]: branch for branch in field.get("anyOf", [field])}


def test_hardware_lists_auto_or_platforms_in_order_of_preference(load_schema):
    branches = _branches(load_schema["hardware"])
    assert branches["string"]["enum"] == ["auto", *HARDWARE_PREFERENCE]
    listed = branches["array"]
    assert listed["items"]["enum"] == list(HARDWARE_PREFERENCE)  # `auto` stands alone
    assert (listed["minItems"], listed["uniqueItems"]) == (1, True)
    for value in [*branches["string"]["enum"], *([platform] for platform in HARDWARE_PREFERENCE),
                  list(HARDWARE_PREFERENCE)]:
        LoadModelRequest(model="m", source="/m", task="embedding", hardware=value).validated_args()
    for value in ("tpu", "", ["auto"], ["cuda", "auto"], [], ["tpu"]):
        with pytest.raises(ValidationError):
            LoadModelRequest(model="m", source="/m", task="embedding", hardware=value).validated_args()


def test_task_and_backend_list_what_is_accepted(load_schema):
    assert _branches(load_schema["task"])["string"]["enum"] == tasks.task_names()
    for task in tasks.task_names():
        assert LoadModelRequest(model="m", source="/m", task=task).validated_args().task == task
    with pytest.raises(ValidationError, match="unknown task"):
        LoadModelRequest(model="m", source="/m", task="no-such-task").validated_args()
    backends = _branches(load_schema["backend"])["string"]["enum"]
    for backend in backends:
        LoadModelRequest(model="m", source="/m", task="embedding", backend=backend).validated_args()
    with pytest.raises(ValidationError):
        LoadModelRequest(model="m", source="/m", task="embedding", backend="onnx")
