"""The n choices of a generation request: how OpenAI numbers them, and running their
sequences concurrently as one stream of events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

E = TypeVar("E")


@dataclass(frozen=True)
class Choice:
    """One generated sequence: which prompt, which of its n samples, its output index."""

    index: int
    prompt_index: int
    sample: int


def choices_for(num_prompts: int, n: int) -> list[Choice]:
    # OpenAI numbers choices prompt-major: prompt 0's n samples first.
    return [Choice(p * n + s, p, s) for p in range(num_prompts) for s in range(n)]


async def run_concurrently(
    choices: list[Choice], start: Callable[[Choice], AsyncIterator[E]]
) -> AsyncIterator[tuple[Choice, E]]:
    """Run every choice's event stream at once, yielding events as they arrive.

    Closing this generator (client gone) closes every stream, which cancels its sequence in
    the engine. The first error of any stream is raised here.
    """
    if len(choices) == 1:  # the common case needs no fan-in machinery
        events = start(choices[0])
        try:
            async for event in events:
                yield choices[0], event
        finally:
            await events.aclose()
        return

    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(choice: Choice) -> None:
        events = start(choice)
        try:
            async for event in events:
                await queue.put((choice, event))
        except BaseException as exc:  # noqa: BLE001 - re-raised by the consumer
            await queue.put(exc)
            return
        finally:
            await events.aclose()
        await queue.put(done)

    tasks = [asyncio.create_task(pump(choice)) for choice in choices]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
