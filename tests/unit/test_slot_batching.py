"""SlotBatcher: a backlog becomes one batch when a slot frees, never more than `slots` batches
at once, chunks never split, an engine error reaches every caller of its batch (and only
them), and a caller that went away is not computed."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from deployments.slot_batching import SlotBatcher


class _Engine:
    """Rows [item] per item; the first batch blocks until released; can fail on an item."""

    def __init__(self, hold_first: bool = False, fail_on: int | None = None, delay_s: float = 0.0):
        self.batches: list[list[int]] = []
        self.running = self.most = 0
        self.release = threading.Event()
        self._hold_first = hold_first
        self._fail_on = fail_on
        self._delay_s = delay_s
        self._lock = threading.Lock()

    def __call__(self, items: list[int]) -> np.ndarray:
        with self._lock:
            self.batches.append(list(items))
            self.running += 1
            self.most = max(self.most, self.running)
            first = len(self.batches) == 1
        try:
            if first and self._hold_first:
                assert self.release.wait(10)
            threading.Event().wait(self._delay_s)
            if self._fail_on is not None and self._fail_on in items:
                raise RuntimeError(f"engine failed on {self._fail_on}")
            return np.array([[float(i)] for i in items])
        finally:
            with self._lock:
                self.running -= 1


async def _until(condition) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def test_a_backlog_becomes_one_batch_when_the_slot_frees():
    engine = _Engine(hold_first=True)

    async def run():
        batcher = SlotBatcher(engine, max_batch_size=8, wait_s=0, slots=1)
        first = asyncio.create_task(batcher.submit([0]))
        await _until(lambda: engine.batches)  # the first batch is running, alone
        later = [asyncio.create_task(batcher.submit([i, i + 100])) for i in range(1, 4)]
        await asyncio.sleep(0.05)
        engine.release.set()
        return await first, await asyncio.gather(*later)

    first, later = asyncio.run(run())
    assert engine.batches == [[0], [1, 101, 2, 102, 3, 103]]
    assert first.tolist() == [[0.0]]
    assert [rows.ravel().tolist() for rows in later] == [[1, 101], [2, 102], [3, 103]]


@pytest.mark.parametrize("slots", [1, 2, 3])
def test_never_more_batches_at_once_than_slots_and_chunks_stay_whole(slots):
    engine = _Engine(delay_s=0.05)

    async def run():
        batcher = SlotBatcher(engine, max_batch_size=5, wait_s=0, slots=slots)
        return await asyncio.gather(*(batcher.submit([i, i + 1000]) for i in range(12)))

    results = asyncio.run(run())
    assert engine.most == slots
    assert all(len(batch) <= 5 and len(batch) % 2 == 0 for batch in engine.batches)
    assert sorted(i for batch in engine.batches for i in batch) == sorted([*range(12), *range(1000, 1012)])
    assert [rows.ravel().tolist() for rows in results] == [[i, i + 1000] for i in range(12)]


def test_the_wait_window_gathers_a_partial_batch_and_a_full_one_goes_at_once():
    engine = _Engine()

    async def run():
        batcher = SlotBatcher(engine, max_batch_size=4, wait_s=0.3, slots=1)
        first = asyncio.create_task(batcher.submit([1]))
        await asyncio.sleep(0.02)
        await asyncio.gather(first, batcher.submit([2]))
        slow = SlotBatcher(engine, max_batch_size=2, wait_s=60, slots=1)
        return await asyncio.wait_for(slow.submit([3, 4]), 10)  # full: no wait

    asyncio.run(run())
    assert engine.batches == [[1, 2], [3, 4]]


def test_an_engine_error_reaches_its_batch_only_and_the_next_batch_runs():
    engine = _Engine(hold_first=True, fail_on=7)

    async def run():
        batcher = SlotBatcher(engine, max_batch_size=8, wait_s=0, slots=1)
        first = asyncio.create_task(batcher.submit([0]))
        await _until(lambda: engine.batches)
        failing = [asyncio.create_task(batcher.submit([i])) for i in (6, 7)]
        await asyncio.sleep(0.05)
        engine.release.set()
        await first
        outcomes = await asyncio.gather(*failing, return_exceptions=True)
        return outcomes, await batcher.submit([9])

    outcomes, after = asyncio.run(run())
    assert all(isinstance(o, RuntimeError) and "failed on 7" in str(o) for o in outcomes)
    assert after.tolist() == [[9.0]]


def test_a_caller_that_went_away_is_not_computed():
    engine = _Engine(hold_first=True)

    async def run():
        batcher = SlotBatcher(engine, max_batch_size=8, wait_s=0, slots=1)
        first = asyncio.create_task(batcher.submit([0]))
        await _until(lambda: engine.batches)
        gone = asyncio.create_task(batcher.submit([5]))
        kept = asyncio.create_task(batcher.submit([6]))
        await asyncio.sleep(0.02)
        gone.cancel()
        engine.release.set()
        await first
        return await kept

    assert asyncio.run(run()).tolist() == [[6.0]]
    assert engine.batches == [[0], [6]]


def test_a_chunk_must_fit_one_batch():
    batcher = SlotBatcher(_Engine(), max_batch_size=2, wait_s=0, slots=1)
    with pytest.raises(ValueError, match="1 to 2 items"):
        asyncio.run(batcher.submit([1, 2, 3]))
    with pytest.raises(ValueError):
        SlotBatcher(_Engine(), max_batch_size=2, wait_s=0, slots=0)
