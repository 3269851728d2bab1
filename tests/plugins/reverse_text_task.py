"""A throwaway plug-in task for the tests, installed the way a separate package would be: a
module plus a dist-info folder naming it in the `hfserve.tasks` entry points (see
tests/integration/test_plugin_task.py). It serves /v1/completions by reversing each prompt,
counting tokens with the model's own tokenizer. Nothing in hfserve knows about it."""

from __future__ import annotations

from collections.abc import AsyncIterator

from contract.model_api import EngineStats
from contract.protocol import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    Usage,
    new_id,
    now,
)
from contract.tasks import TaskSpec
from deployments.model_files import load_tokenizer


class ReverseText:
    def __init__(self, model_id: str, tokenizer):
        self.model_id = model_id
        self.tokenizer = tokenizer
        self.finished = 0

    def _answer(self, request: CompletionRequest) -> tuple[list[str], Usage]:
        prompts = [p if isinstance(p, str) else self.tokenizer.decode(p) for p in request.prompts()]
        texts = [prompt[::-1] for prompt in prompts]
        prompt_tokens = sum(len(self.tokenizer(p)["input_ids"]) for p in prompts)
        completion_tokens = sum(len(self.tokenizer(t)["input_ids"]) for t in texts)
        self.finished += 1
        return texts, Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                            total_tokens=prompt_tokens + completion_tokens)

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        texts, usage = self._answer(request)
        return CompletionResponse(
            id=new_id("cmpl"), created=now(), model=self.model_id, usage=usage,
            choices=[CompletionChoice(index=i, text=text, finish_reason="stop") for i, text in enumerate(texts)],
        )

    async def complete_stream(self, request: CompletionRequest) -> AsyncIterator[CompletionResponse]:
        texts, usage = self._answer(request)
        chunk_id, created = new_id("cmpl"), now()
        for i, text in enumerate(texts):
            yield CompletionResponse(id=chunk_id, created=created, model=self.model_id,
                                     choices=[CompletionChoice(index=i, text=text, finish_reason="stop")])
        if request.include_usage_in_stream:
            yield CompletionResponse(id=chunk_id, created=created, model=self.model_id, choices=[], usage=usage)

    def stats(self) -> EngineStats:
        return EngineStats(finished_requests_total=self.finished)

    def check_health(self) -> None:
        return None

    def shutdown(self) -> None:
        return None


def load(model_id: str, args, prepared, backend) -> ReverseText:
    return ReverseText(model_id, load_tokenizer(prepared.hf_dir))


TASK = TaskSpec(
    name="reverse-text",
    summary="a test plug-in: completions that reverse the prompt",
    endpoints=("complete",),
    load=load,
    hf_task="text-generation",
)
