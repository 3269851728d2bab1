"""Batches formed when the engine can take them: concurrent callers' chunks joined into one
engine call as soon as one of the engine's `slots` is free, from everything waiting by then.

Why not @serve.batch here: Ray's batch queue forms each batch as soon as its wait window
ends, whether or not a batch can run, and formed batches then queue behind its
`max_concurrent_batches` semaphore. Under load the backlog therefore runs as a string of
small batches (a mean of 2-3 single-input requests per batch at c=32 on 2 cores,
`python -m bench.profile`) instead of merging into one, and small batches cost the encoder
the most CPU per input. Here a batch is formed only once a slot is free, so a backlog
becomes one batch (up to `max_batch_size` items) and the batch size follows the load.

The wait window is kept for the case where it helps: a free slot with fewer than
`max_batch_size` items waiting waits up to `wait_s` for more, as @serve.batch does.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


class SlotBatcher:
    def __init__(self, compute: Callable[[list[Any]], np.ndarray], *, max_batch_size: int, wait_s: float, slots: int,
                 on_batch: Callable[[int], Any] | None = None):
        """compute(items) -> one row per item, blocking (run in a thread); at most `slots` at once."""
        if max_batch_size < 1 or slots < 1 or wait_s < 0:
            raise ValueError("max_batch_size and slots must be at least 1, wait_s not negative")
        self._compute = compute
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self.slots = slots
        self._on_batch = on_batch
        self._waiting: deque[tuple[Sequence[Any], asyncio.Future]] = deque()
        self._items_waiting = 0
        self._running = 0  # slots forming or running a batch
        self._tasks: set[asyncio.Task] = set()  # held: the loop keeps only weak references to tasks

    async def submit(self, chunk: Sequence[Any]) -> np.ndarray:
        """The rows of `chunk` (at most max_batch_size items), computed in some batch."""
        if not 0 < len(chunk) <= self.max_batch_size:
            raise ValueError(f"a chunk has 1 to {self.max_batch_size} items, not {len(chunk)}")
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((chunk, future))
        self._items_waiting += len(chunk)
        if self._running < self.slots:
            self._running += 1
            task = asyncio.create_task(self._slot())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _slot(self) -> None:
        """One slot: batches until nothing waits."""
        try:
            while self._waiting:
                if self._items_waiting < self.max_batch_size and self.wait_s > 0:
                    await asyncio.sleep(self.wait_s)
                batch = self._take()
                if batch:
                    await self._run(batch)
        finally:
            self._running -= 1

    def _take(self) -> list[tuple[Sequence[Any], asyncio.Future]]:
        batch, size = [], 0
        while self._waiting and size + len(self._waiting[0][0]) <= self.max_batch_size:
            chunk, future = self._waiting.popleft()
            self._items_waiting -= len(chunk)
            if future.done():  # the caller went away (a client disconnect cancels its request)
                continue
            batch.append((chunk, future))
            size += len(chunk)
        return batch

    async def _run(self, batch: list[tuple[Sequence[Any], asyncio.Future]]) -> None:
        try:
            parts = await _run_flattened([chunk for chunk, _ in batch], self._compute, self._on_batch)
        except Exception as error:  # every caller of the batch gets the engine's error
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), rows in zip(batch, parts, strict=True):
            if not future.done():
                future.set_result(rows)


async def _run_flattened(chunks: Sequence[Sequence[Any]], compute: Callable[[list[Any]], np.ndarray],
                         on_batch: Callable[[int], Any] | None = None) -> list[np.ndarray]:
    """compute(every item of every chunk) once, in a thread (off the replica's event loop); each
    chunk's rows back, in order."""
    flat = [item for chunk in chunks for item in chunk]
    if on_batch is not None:
        on_batch(len(flat))
    rows = await asyncio.to_thread(compute, flat)
    out, start = [], 0
    for chunk in chunks:
        out.append(rows[start : start + len(chunk)])
        start += len(chunk)
    return out
