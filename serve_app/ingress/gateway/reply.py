"""What the gateway answers: a protocol object or a stream of chunks, with the facts the HTTP
layer turns into headers (the caller's rate-limit state, whether the cache answered, the model
asked for when a fallback served)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel

FALLBACK_HEADER = "x-hfserve-fallback"


class ChunkStream:
    """The chunks of a streamed answer, and how to stop producing them when the client leaves."""

    def __init__(self, chunks: AsyncIterator[BaseModel], cancel: Callable[[], None] | None = None, *,
                 first_received: bool = False):
        self._chunks = chunks
        self._cancel = cancel
        self.first_received = first_received

    def __aiter__(self) -> AsyncIterator[BaseModel]:
        return self._chunks

    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel()

    async def started(self) -> ChunkStream:
        """This stream with its first chunk already received: a model refuses a stream, or finds
        its request bad, with that chunk, before anything reached the client. Closing the
        stream returned closes this one (the flow's own end: its settlement)."""
        if self.first_received:
            return self
        iterator = self._chunks
        try:
            first = await iterator.__anext__()
        except StopAsyncIteration:
            first = None
        except BaseException:
            self.cancel()
            raise

        async def chunks() -> AsyncIterator[BaseModel]:
            try:
                if first is not None:
                    yield first
                    async for chunk in iterator:
                        yield chunk
            finally:
                close = getattr(iterator, "aclose", None)
                if close is not None:
                    await close()

        return ChunkStream(chunks(), self._cancel, first_received=True)


@dataclass
class Reply:
    result: BaseModel | ChunkStream
    ratelimit_headers: dict[str, str] = field(default_factory=dict)
    cache: Literal["HIT", "MISS"] | None = None  # None: not looked up (not cacheable, or caching off)
    fallback_from: str | None = None  # the model asked for, when a fallback served (gateway/fallbacks.py)

    @property
    def headers(self) -> dict[str, str]:
        headers = dict(self.ratelimit_headers)
        if self.cache is not None:
            headers["x-cache"] = self.cache
        if self.fallback_from is not None:
            headers[FALLBACK_HEADER] = self.fallback_from
        return headers
