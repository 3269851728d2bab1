"""Deterministic fakes for unit tests: a hand-moved clock and a fake ingress (never used in integration tests)."""

from __future__ import annotations

import asyncio
import base64
import contextlib

import numpy as np

from contract import tasks
from contract.embedding_protocol import EmbeddingData, EmbeddingResponse, EmbeddingUsage
from contract.errors import ContextLengthExceededError, InternalServerError
from contract.model_api import EngineStats, ModelInfo, check_request_tokens
from contract.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatDelta,
    ChatMessageOut,
    Usage,
)
from contract.scoring_protocol import (
    ClassificationData,
    ClassificationResponse,
    ClassificationUsage,
    LabelScore,
    RerankResponse,
    RerankResult,
    RerankUsage,
)
from deployments import tokenization
from serve_app.ingress.model_directory import AppState


class Clock:
    """A clock the test moves by hand: pass it wherever the code takes `clock=time.monotonic`."""

    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class CharTokenizer:
    """A tokenizer whose tokens are a text's characters' codes (below 256); BOS is 1."""

    def __len__(self) -> int:
        return 256

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [1] * add_special_tokens + [ord(c) % 256 for c in text]}

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [chr(i) for i in ids]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)


CHARS = CharTokenizer()


class FakeModel:
    """Echoes the last user message word by word. 'TOO LONG' raises the context-length
    error; `fail` makes every call a model-side 500. Counts calls."""

    def __init__(self, model_id: str, task: str):
        self.model_id = model_id
        self.task = task
        self.cancelled = 0
        self.calls = 0
        self.embedded: list[str] = []
        self.fail = False
        self.created = 123
        self.version = "v1"  # what ModelInfo.revision is made of; `created` is per replica
        self.delay_s = 0.0
        self.first_chunk_delay_s = 0.0  # a stream's "prefill": its first chunk waits this long
        self.request_timeout_s = 5.0
        self.replica_id = "r1"  # which replica answers; a test replaces it to model a new one
        self.fallbacks: list[str] = []  # its fallback args, as ModelInfo reports them
        self.context_fallbacks: list[str] = []
        self.fallback_after_s: float | None = None

    def _check(self, request):
        self.calls += 1
        if self.fail:
            raise InternalServerError("engine broke")
        if request.messages[-1].text() == "TOO LONG":
            raise ContextLengthExceededError("too long", param="messages")

    @staticmethod
    def _usage(text: str) -> Usage:
        words = len(text.split())
        return Usage(prompt_tokens=3, completion_tokens=words, total_tokens=3 + words)

    async def chat(self, request):
        self._check(request)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        text = request.messages[-1].text()
        return ChatCompletionResponse(
            id="chatcmpl-1", created=1, model=self.model_id,
            choices=[ChatChoice(index=0, message=ChatMessageOut(content=text), finish_reason="stop")],
            usage=self._usage(text),
        )

    def chat_stream(self, request):
        model = self
        options = request.stream_options

        class Stream:
            def __init__(self):
                self._gen = self._run()

            async def _run(self):
                model._check(request)
                words = request.messages[-1].text().split()
                continuous = bool(options and options.continuous_usage_stats)

                def usage(n):
                    return Usage(prompt_tokens=3, completion_tokens=n, total_tokens=3 + n) if continuous else None

                def chunk(delta, finish=None, n=0):
                    return ChatCompletionChunk(id="c", created=1, model=model.model_id, usage=usage(n),
                                               choices=[ChatChunkChoice(index=0, delta=delta, finish_reason=finish)])

                if model.first_chunk_delay_s:
                    await asyncio.sleep(model.first_chunk_delay_s)
                first = chunk(ChatDelta(role="assistant", content=""))
                first._replica_started_s = model.first_chunk_delay_s  # as ModelServer notes it
                yield first
                for i, word in enumerate(words):
                    await asyncio.sleep(0)
                    yield chunk(ChatDelta(content=(" " if i else "") + word), n=i + 1)
                yield chunk(ChatDelta(), "stop", len(words))
                if options and options.include_usage:
                    yield ChatCompletionChunk(id="c", created=1, model=model.model_id, choices=[],
                                              usage=Usage(prompt_tokens=3, completion_tokens=len(words), total_tokens=3 + len(words)))

            def __aiter__(self):
                return self._gen

            def cancel(self):
                model.cancelled += 1

        return Stream()

    async def complete(self, request):
        """Echoes a text prompt (the breakers' probe completes one short prompt)."""
        from contract.protocol import CompletionChoice, CompletionResponse

        self.calls += 1
        if self.fail:
            raise InternalServerError("engine broke")
        text = request.prompt if isinstance(request.prompt, str) else ""
        return CompletionResponse(id="cmpl-1", created=1, model=self.model_id, usage=self._usage(text),
                                  choices=[CompletionChoice(index=0, text=text, finish_reason="stop")])

    async def embed(self, request):
        self.calls += 1
        if self.fail:
            raise InternalServerError("engine broke")
        inputs = request.inputs()
        check_request_tokens(request, sum(len(str(i).split()) + 2 for i in inputs), param="input")
        self.embedded.extend(i for i in inputs if isinstance(i, str))
        vectors = [np.array([float(len(str(i))), 1.0], dtype=np.float32) for i in inputs]
        data = [
            EmbeddingData(index=i, embedding=base64.b64encode(v.tobytes()).decode() if request.encoding_format == "base64" else v.tolist())
            for i, v in enumerate(vectors)
        ]
        tokens = [len(str(i).split()) + 2 for i in inputs]
        return EmbeddingResponse(data=data, model=self.model_id,
                                 usage=EmbeddingUsage(prompt_tokens=sum(tokens), total_tokens=sum(tokens), input_tokens=tokens))

    async def rerank(self, request):
        """Relevance = the document's length / 100; a pair costs its words plus 3 tokens."""
        self.calls += 1
        if self.fail:
            raise InternalServerError("engine broke")
        tokens = [len(request.query.split()) + len(doc.split()) + 3 for doc in request.documents]
        check_request_tokens(request, sum(tokens), param="documents")
        self.reranked = getattr(self, "reranked", []) + list(request.documents)
        order = sorted(range(len(request.documents)), key=lambda i: -len(request.documents[i]))
        results = [RerankResult(index=i, relevance_score=len(request.documents[i]) / 100) for i in order[: request.top_n]]
        return RerankResponse(id="rerank-1", model=self.model_id, results=results,
                              usage=RerankUsage(prompt_tokens=sum(tokens), total_tokens=sum(tokens), input_tokens=tokens))

    async def classify(self, request):
        """Labels short/long: P(short) = 1 / (1 + the text's length); a text costs its words plus 2 tokens."""
        self.calls += 1
        check_request_tokens(request, sum(len(text.split()) + 2 for text in request.inputs()), param="input")
        self.classified = getattr(self, "classified", []) + request.inputs()
        data, tokens = [], []
        for index, text in enumerate(request.inputs()):
            short = 1 / (1 + len(text))
            ranked = [LabelScore(label="short", score=short), LabelScore(label="long", score=1 - short)]
            ranked.sort(key=lambda item: -item.score)
            data.append(ClassificationData(index=index, label=ranked[0].label, probs=[short, 1 - short], num_classes=2,
                                           scores=ranked))
            tokens.append(len(text.split()) + 2)
        return ClassificationResponse(id="classify-1", created=1, model=self.model_id, data=data,
                                      usage=ClassificationUsage(prompt_tokens=sum(tokens), total_tokens=sum(tokens),
                                                                input_tokens=tokens))

    async def tokenize(self, request):
        """The replica's own tokenize (deployments/tokenization.py) over CharTokenizer; messages,
        for a text-generation model only, as 'role: text' lines."""
        self.calls += 1
        if self.fail:
            raise InternalServerError("engine broke")

        def chat_ids(r):
            text = "".join(f"{m.role}: {m.text()}\n" for m in r.messages)
            return CHARS(text + ("assistant: " if r.add_generation_prompt else ""), add_special_tokens=r.special_tokens)["input_ids"]

        return tokenization.tokenize(CHARS, request, 2048, self.model_id,
                                     chat_ids if self.task == "text-generation" else None)

    async def detokenize(self, request):
        self.calls += 1
        return tokenization.detokenize(CHARS, request)

    async def call_with_progress(self, method, request, timeout_s, on_start=None):
        # A fake sends no heartbeats: a call slower than timeout_s times out, as a silent replica's would.
        self.progress_calls = getattr(self, "progress_calls", 0) + 1
        if on_start is not None:
            on_start()  # started at once: a fake has no queue
        return await asyncio.wait_for(getattr(self, method)(request), timeout_s)

    async def info(self):
        return ModelInfo(id=self.model_id, task=self.task, owned_by="test", created=self.created, backend="fake",
                         device="cpu", source="fake", request_timeout_s=self.request_timeout_s,
                         endpoints=list(tasks.get(self.task).endpoints), replica_id=self.replica_id,
                         revision=f"fake@{self.version}", platform="cpu", max_batch_size=4,
                         max_rerank_documents=4 if self.task == "rerank" else None, fallbacks=self.fallbacks,
                         context_fallbacks=self.context_fallbacks, fallback_after_s=self.fallback_after_s)

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


def make_app(tmp_path, fake_serve: FakeServe, **ingress_args):
    """The real ingress app and gateway over the fakes and an in-process state core."""
    import time

    from contract.ingress_args import IngressArgs
    from serve_app.ingress.deployment import create_app
    from serve_app.ingress.wiring import build_gateway
    from serve_app.state.client import StateClient
    from serve_app.state.core import StateCore, StateSettings

    metrics_sink = ingress_args.pop("metrics_sink", None)  # (spec, value, labels) of every metric recorded
    scraper = ingress_args.pop("scraper", None)  # what /metrics serves
    clock = ingress_args.pop("clock", time.monotonic)
    deployed_args = ingress_args.pop("deployed_args", None)  # the config-file models' args, as deployed
    state_clock = ingress_args.pop("state_clock", time.monotonic)
    # The directory lists the applications again only when a test asks it to (or moves `clock`).
    args = IngressArgs(state_dir=tmp_path, **{"model_info_ttl_s": 60, **ingress_args})
    core = StateCore(StateSettings.from_args(args), clock=state_clock)
    from observability.recorder import Recorder

    gateway = build_gateway(args, StateClient.local(core), list_apps=fake_serve.list_apps, connect=fake_serve.connect,
                            clock=clock, metrics=Recorder(sink=metrics_sink) if metrics_sink is not None else None,
                            deployed_args=deployed_args)
    return create_app(gateway, args, scraper), gateway, core


@contextlib.contextmanager
def admin_client(tmp_path, fake_serve: FakeServe, **ingress_args):
    """(a TestClient of make_app's app, its state core, the admin key's headers), keys re-read at
    once (key_cache_ttl_s 1 ms) so a change shows on the next request."""
    from fastapi.testclient import TestClient

    from serve_app.state.keys import read_admin_key_file

    app, gateway, core = make_app(tmp_path, fake_serve, **{"key_cache_ttl_s": 0.001, **ingress_args})
    with TestClient(app) as client:
        client.gateway = gateway  # for a test to flush what the gateway batches
        yield client, core, {"Authorization": f"Bearer {read_admin_key_file(tmp_path)}"}
