"""Deterministic fakes for unit tests of the ingress (never used in integration tests)."""

from __future__ import annotations

import asyncio

from serve_app.errors import ContextLengthExceededError
from serve_app.model_directory import AppState
from serve_app.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatDelta,
    ChatMessageOut,
    EmbeddingData,
    EmbeddingResponse,
    EmbeddingUsage,
    EngineStats,
    ModelInfo,
    Usage,
)


class FakeModel:
    """Echoes the last user message; 'TOO LONG' raises the context-length error."""

    def __init__(self, model_id: str, task: str):
        self.model_id = model_id
        self.task = task
        self.cancelled = 0
        self.info_calls = 0

    def _check(self, request):
        if request.messages[-1].text() == "TOO LONG":
            raise ContextLengthExceededError("too long", param="messages")

    async def chat(self, request):
        self._check(request)
        text = request.messages[-1].text()
        return ChatCompletionResponse(
            id="chatcmpl-1", created=1, model=self.model_id,
            choices=[ChatChoice(index=0, message=ChatMessageOut(content=text), finish_reason="stop")],
            usage=Usage(prompt_tokens=3, completion_tokens=len(text.split()), total_tokens=3 + len(text.split())),
        )

    def chat_stream(self, request):
        model = self

        class Stream:
            def __init__(self):
                self._gen = self._run()

            async def _run(self):
                model._check(request)
                yield ChatCompletionChunk(id="c", created=1, model=model.model_id,
                                          choices=[ChatChunkChoice(index=0, delta=ChatDelta(role="assistant", content=""))])
                for word in request.messages[-1].text().split():
                    await asyncio.sleep(0)
                    yield ChatCompletionChunk(id="c", created=1, model=model.model_id,
                                              choices=[ChatChunkChoice(index=0, delta=ChatDelta(content=word))])
                yield ChatCompletionChunk(id="c", created=1, model=model.model_id,
                                          choices=[ChatChunkChoice(index=0, delta=ChatDelta(), finish_reason="stop")])

            def __aiter__(self):
                return self._gen

            def cancel(self):
                model.cancelled += 1

        return Stream()

    async def embed(self, request):
        return EmbeddingResponse(
            data=[EmbeddingData(index=i, embedding=[1.0, 0.0]) for i, _ in enumerate(request.inputs())],
            model=self.model_id,
            usage=EmbeddingUsage(prompt_tokens=1, total_tokens=1),
        )

    async def info(self):
        self.info_calls += 1
        return ModelInfo(id=self.model_id, task=self.task, owned_by="test", created=123, backend="fake",
                         device="cpu", source="fake")

    async def stats(self):
        return EngineStats()


class FakeServe:
    """What Serve would report: application states, and a client per application."""

    def __init__(self, models: dict[str, FakeModel], states: dict[str, AppState] | None = None):
        self.models = models
        self.states = states or {name: AppState(name, "RUNNING") for name in models}
        self.list_calls = 0

    async def list_apps(self):
        self.list_calls += 1
        return list(self.states.values())

    async def connect(self, name):
        return self.models[name]
