"""CORS on the ingress: off by default; once origins are listed, a browser's preflight is answered
without a key, the request itself still needs one, and its answer (an error included) carries the
headers a browser application needs to read it."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from contract.ingress_args import IngressArgs
from tests.unit.fakes import admin_client, make_app
from tests.unit.test_gateway import CHAT, bearer, new_key

ORIGIN = "https://app.example"
PREFLIGHT = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, content-type"}


@pytest.fixture
def cors(serve, tmp_path):
    with admin_client(tmp_path, serve, cors_allow_origins=[ORIGIN, "http://localhost:3000"], cors_max_age_s=120) as (
            client, _, admin):
        yield client, admin


def test_cors_is_off_by_default(serve, tmp_path):
    app, _, _ = make_app(tmp_path, serve)
    with TestClient(app) as client:
        preflight = client.options("/v1/chat/completions", headers=PREFLIGHT)
        assert preflight.status_code == 401  # an OPTIONS like any other: no key, no answer
        assert "access-control-allow-origin" not in preflight.headers


def test_a_preflight_is_answered_without_a_key(cors):
    client, _ = cors
    preflight = client.options("/v1/chat/completions", headers=PREFLIGHT)
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert preflight.headers["access-control-max-age"] == "120"
    assert {"authorization", "content-type"} <= {h.strip() for h in
                                                 preflight.headers["access-control-allow-headers"].lower().split(",")}
    assert "POST" in preflight.headers["access-control-allow-methods"]


def test_the_request_itself_still_needs_a_key_and_its_answers_are_readable(cors):
    client, admin = cors
    refused = client.post("/v1/chat/completions", json=CHAT, headers={"Origin": ORIGIN})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == ORIGIN  # the browser lets the page read the 401
    key, _ = new_key(client, admin)
    answered = client.post("/v1/chat/completions", json=CHAT, headers={"Origin": ORIGIN, **bearer(key)})
    assert answered.status_code == 200
    assert answered.headers["access-control-allow-origin"] == ORIGIN
    exposed = {h.strip() for h in answered.headers["access-control-expose-headers"].split(",")}
    assert {"x-request-id", "x-ratelimit-remaining-requests", "retry-after"} <= exposed


def test_an_origin_not_listed_gets_no_cors_headers(cors):
    client, _ = cors
    preflight = client.options("/v1/chat/completions", headers={**PREFLIGHT, "Origin": "https://evil.example"})
    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers
    refused = client.get("/v1/models", headers={"Origin": "https://evil.example"})
    assert refused.status_code == 401 and "access-control-allow-origin" not in refused.headers


@pytest.mark.parametrize(("field", "value", "message"), [
    ("cors_allow_origins", ["https://app.example/"], "is not '*' or an origin"),
    ("cors_allow_origins", ["app.example"], "is not '*' or an origin"),
    ("cors_allow_origins", ["https://app.example/path"], "is not '*' or an origin"),
    ("cors_allow_headers", ["content type"], "is not a header name"),
    ("cors_max_age_s", -1, "greater than or equal to 0"),
])
def test_bad_cors_settings_fail_naming_the_field(field, value, message):
    with pytest.raises(ValidationError) as error:
        IngressArgs(**{field: value})
    assert error.value.errors()[0]["loc"][0] == field
    assert message in str(error.value)
