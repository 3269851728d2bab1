"""Request ids: the `x-request-id` a request is known by, in its response and on every log line.

Ray Serve's proxy takes the client's `x-request-id` as Serve's request id (or makes a uuid4),
returns it in the response's `X-Request-ID`, and Serve's log filter writes it on every log line
of every replica the request reaches, model replicas included. It does not check the id:
`RequestIdMiddleware` does (a valid id is kept; a bad one, or two headers, is a 400).
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract.errors import InvalidRequestError
from serve_app.ingress.http.errors import error_response

REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID_LENGTH = 128
_VALID = re.compile(rf"[A-Za-z0-9._:+/=-]{{1,{MAX_REQUEST_ID_LENGTH}}}")
INVALID_REQUEST_ID_MESSAGE = (
    f"The {REQUEST_ID_HEADER} header must be sent at most once, as 1 to {MAX_REQUEST_ID_LENGTH} "
    "characters among A-Z a-z 0-9 . _ : + / = -"
)


def is_valid_request_id(value: str) -> bool:
    return _VALID.fullmatch(value) is not None


def new_request_id() -> str:
    return uuid.uuid4().hex


def effective_request_id(values: Sequence[str]) -> str | None:
    """The id of a request whose `x-request-id` headers are `values`: the one given if it is
    valid, None when there is none (the caller makes one); InvalidRequestError otherwise."""
    if not values:
        return None
    if len(values) > 1 or not is_valid_request_id(values[0]):
        raise InvalidRequestError(INVALID_REQUEST_ID_MESSAGE, code="invalid_request_id")
    return values[0]


def install_in_serve_context(request_id: str) -> None:
    """Make `request_id` this request's id in Ray Serve's request context: the one Serve's log
    filter writes on each line and DeploymentHandle calls pass to the model replicas."""
    from ray.serve import context as serve_context

    current = serve_context._get_serve_request_context()
    if current.request_id != request_id:
        serve_context._serve_request_context.set(dataclasses.replace(current, request_id=request_id))


class RequestIdMiddleware:
    """Checks the request id, refuses a bad one, makes one where none came, and stores it in
    `scope["state"]["request_id"]` and Serve's request context. `echo`: add it to the response
    (not behind Serve's proxy, which does so itself; without a proxy, as in the unit tests, a
    request without the header gets a new id and `echo=True` returns it).

    A valid id (`is_valid_request_id`: 1 to 128 characters of `A-Z a-z 0-9 . _ : + / = -`, which
    covers uuids, hex, ULIDs, W3C trace ids and base64(url) ids, and nothing that could break a log
    line or a header) is kept; an invalid one, or more than one header, is a 400
    `invalid_request_id`. Refused rather than replaced: the proxy appends the id it received to
    every response after the replica has answered, so a replaced id would send two headers and log
    lines that disagree with the proxy's access log; a refusal carries exactly one header, the
    client's own, and nothing runs under the bad id. With two headers the proxy echoes the first
    but puts the last in the request context, so they are refused too."""

    def __init__(self, app: ASGIApp, *, echo: bool = True):
        self.app = app
        self.echo = echo

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        name = REQUEST_ID_HEADER.encode()
        values = [value.decode("latin-1") for key, value in scope.get("headers", ()) if key.lower() == name]
        try:
            request_id = effective_request_id(values)
        except InvalidRequestError as error:
            request_id = new_request_id()
            scope.setdefault("state", {})["request_id"] = request_id
            await error_response(error)(scope, receive, self._echoing(send, request_id))
            return
        if request_id is None:
            request_id = new_request_id()
            scope["headers"] = [*scope.get("headers", ()), (name, request_id.encode())]
        install_in_serve_context(request_id)  # behind the proxy it is there already
        scope.setdefault("state", {})["request_id"] = request_id
        await self.app(scope, receive, self._echoing(send, request_id))

    def _echoing(self, send: Send, request_id: str) -> Send:
        if not self.echo:
            return send

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != REQUEST_ID_HEADER.encode()]
                message["headers"] = [*headers, (REQUEST_ID_HEADER.encode(), request_id.encode())]
            await send(message)

        return sending
