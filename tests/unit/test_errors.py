"""Typed errors: the OpenAI body, param names from validation errors, crossing processes."""

from __future__ import annotations

import pickle

from pydantic import ValidationError

from contract.errors import (
    APIError,
    ContextLengthExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    ServiceUnavailableError,
    as_api_error,
    validation_error_to_api_error,
)
from contract.protocol import ChatCompletionRequest


def test_body_shape():
    error = ContextLengthExceededError("too long", param="messages")
    assert error.status_code == 400
    assert error.body() == {
        "error": {"message": "too long", "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}
    }


def test_model_not_found():
    error = ModelNotFoundError("gpt-9")
    assert error.status_code == 404
    assert error.body()["error"]["code"] == "model_not_found"
    assert error.body()["error"]["param"] == "model"
    assert "gpt-9" in error.message


def test_service_unavailable_sets_retry_after():
    assert ServiceUnavailableError("busy", retry_after_s=7).headers["Retry-After"] == "7"


def test_errors_survive_pickling_with_their_fields():
    error = InvalidRequestError("bad", param="temperature", code="invalid_value", headers={"X": "1"})
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is InvalidRequestError
    assert (copy.message, copy.param, copy.code, copy.headers) == ("bad", "temperature", "invalid_value", {"X": "1"})


def test_as_api_error_unwraps_ray_task_errors():
    from ray.exceptions import RayTaskError

    original = ContextLengthExceededError("too long", param="prompt")
    wrapped = RayTaskError("chat", "traceback...", original).as_instanceof_cause()
    found = as_api_error(wrapped)
    assert found is not None
    assert found.param == "prompt"
    assert found.status_code == 400
    assert as_api_error(ValueError("plain")) is None


def _errors(payload):
    try:
        ChatCompletionRequest.model_validate(payload)
    except ValidationError as exc:
        return exc.errors()
    raise AssertionError("expected a validation error")


def test_param_paths_from_validation_errors():
    msg = [{"role": "user", "content": "x"}]
    assert validation_error_to_api_error(_errors({"model": "m", "messages": msg, "temperature": -1})).param == "temperature"
    nested = _errors({"model": "m", "messages": [{"role": "user", "content": 5}]})
    assert validation_error_to_api_error(nested).param == "messages[0].content"
    assert validation_error_to_api_error(_errors({"model": "m", "messages": msg, "stream_options": {}})).param == "stream_options"
    json_error = validation_error_to_api_error([{"type": "json_invalid", "loc": ("body", 0), "msg": "x"}])
    assert json_error.code == "invalid_json" and json_error.param is None


def test_api_error_is_an_exception_with_its_message():
    assert str(APIError("boom")) == "boom"
