"""Batches formed when the engine can take them, fairly across callers.

A batch is formed only once one of the engine's `slots` is free, from everything waiting then,
so a backlog becomes one batch and the batch size follows the load; @serve.batch forms one at
the end of each wait window whether or not it can run. A free slot with fewer than
`max_batch_size` items waiting waits up to `wait_s` for more, as @serve.batch does.

Fair (issue 27): callers take turns of at most `max_batch_size` items, and batches of callers new
since the last turn alternate with the others', so a small request sent while a large one runs
is the next batch, on its own. Measurements: docs/performance.md, "Levers" (levers-2026-11-29.json)
and "Fairness" (fairness-2026-12-06-2.json), both under bench/results/.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


class _Caller:
    """One run() call: its items, how far batches have taken them, and the rows back so far."""

    def __init__(self, items: Sequence[Any], future: asyncio.Future):
        self.items = items
        self.future = future
        self.taken = 0  # items handed to batches
        self.turn_used = 0  # items taken in the current turn
        self.back = 0  # items whose rows are back
        self.parts: dict[int, np.ndarray] = {}  # first item's index -> rows

    @property
    def left(self) -> int:
        return len(self.items) - self.taken


Piece = tuple[_Caller, int, int]  # (caller, first item, item count)


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
        self._fresh: deque[_Caller] = deque()  # callers yet to finish a first turn, in arrival order
        self._turns: deque[_Caller] = deque()  # the others with items left, round robin
        self._turn_owed = False  # the last batch was the fresh callers' while the others waited
        self._items_waiting = 0
        self._running = 0  # slots forming or running a batch
        self._tasks: set[asyncio.Task] = set()  # held: the loop keeps only weak references to tasks

    async def run(self, items: Sequence[Any]) -> np.ndarray:
        """The rows of `items` (any number), in order, computed in batches shared with other
        callers: a caller's items may be split across batches."""
        if not items:
            raise ValueError("run() needs at least one item")
        caller = _Caller(items, asyncio.get_running_loop().create_future())
        self._fresh.append(caller)
        self._items_waiting += len(items)
        wanted = -(-len(items) // self.max_batch_size)  # batches this caller alone fills
        while self._running < self.slots and wanted > 0:
            self._running += 1
            wanted -= 1
            task = asyncio.create_task(self._slot())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            return await caller.future
        finally:
            self._drop(caller)  # cancelled or failed: its items not yet taken are never computed

    async def _slot(self) -> None:
        """One slot: batches until nothing waits."""
        try:
            while self._fresh or self._turns:
                if self._items_waiting < self.max_batch_size and self.wait_s > 0:
                    await asyncio.sleep(self.wait_s)
                batch = self._take()
                if batch:
                    await self._run(batch)
        finally:
            self._running -= 1

    def _take(self) -> list[Piece]:
        """Up to max_batch_size items from one queue, the fresh callers' (in arrival order) or the
        others', each caller giving at most max_batch_size items per turn (one cut short by a
        full batch keeps its place). The queues alternate while both wait, so a small request
        neither shares its batch with a large one nor waits behind more than one of its batches."""
        queue = self._turns if self._turns and (not self._fresh or self._turn_owed) else self._fresh
        self._turn_owed = queue is self._fresh and bool(self._turns)  # the others waited for this batch
        batch: list[Piece] = []
        room = self.max_batch_size
        while room and queue:
            caller = queue[0]
            if caller.future.done():  # the caller went away (a client disconnect cancels its request)
                self._drop(caller)
                continue
            count = min(room, caller.left, self.max_batch_size - caller.turn_used)
            batch.append((caller, caller.taken, count))
            caller.taken += count
            caller.turn_used += count
            self._items_waiting -= count
            room -= count
            if caller.left == 0 or caller.turn_used == self.max_batch_size:
                queue.popleft()
                caller.turn_used = 0
                if caller.left:
                    self._turns.append(caller)
        return batch

    def _drop(self, caller: _Caller) -> None:
        """Forget a caller's items not yet taken (idempotent)."""
        if caller.left == 0:  # not queued
            return
        for queue in (self._fresh, self._turns):
            if caller in queue:
                queue.remove(caller)
        self._items_waiting -= caller.left
        caller.taken = len(caller.items)

    async def _run(self, batch: list[Piece]) -> None:
        flat = [item for caller, start, count in batch for item in caller.items[start : start + count]]
        if self._on_batch is not None:
            self._on_batch(len(flat))
        try:
            rows = await asyncio.to_thread(self._compute, flat)  # off the replica's event loop
        except Exception as error:  # every caller of the batch gets the engine's error
            for caller, _, _ in batch:
                if not caller.future.done():
                    caller.future.set_exception(error)
            return
        offset = 0
        for caller, start, count in batch:
            caller.parts[start] = rows[offset : offset + count]
            offset += count
            caller.back += count
            if caller.back == len(caller.items) and not caller.future.done():
                parts = [caller.parts[key] for key in sorted(caller.parts)]
                caller.future.set_result(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0))

