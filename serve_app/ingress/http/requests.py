"""Request bodies as the routes see them: JSON in which every lone UTF-16 surrogate is
replaced by U+FFFD (contract/text.py says why), so every text field accepts any JSON string.

The routes use `TextSafeRoute`, FastAPI's documented way to give handlers a custom Request.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from contract.text import replace_lone_surrogates

# Cheap test on the raw bytes: only a body that escapes a surrogate can hold a lone one.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def loads(body: bytes) -> Any:
    data = json.loads(body)
    return replace_lone_surrogates(data) if _SURROGATE_ESCAPE.search(body) else data


class TextSafeRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads(await self.body())
        return self._json


class TextSafeRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def text_safe_handler(request: Request) -> Response:
            return await handler(TextSafeRequest(request.scope, request.receive))

        return text_safe_handler
