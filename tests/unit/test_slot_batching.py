"""SlotBatcher: a backlog becomes one batch when a slot frees, never more than `slots` batches
at once, every caller's rows back in order, an engine error reaches every caller of its batch
(and only them), a caller that went away is not computed, and callers take turns: a small
request sent while a large one runs goes into the next batch (issue 27)."""

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
        first = asyncio.create_task(batcher.run([0]))
        await _until(lambda: engine.batches)  # the first batch is running, alone
        later = [asyncio.create_task(batcher.run([i, i + 100])) for i in range(1, 4)]
        await asyncio.sleep(0.05)
        engine.release.set()
        return await first, await asyncio.gather(*later)

    first, later = asyncio.run(run())
    assert engine.batches == [[0], [1, 101, 2, 102, 3, 103]]
    assert first.tolist() == [[0.0]]
    assert [rows.ravel().tolist() for rows in later] == [[1, 101], [2, 102], [3, 103]]


@pytest.mark.parametrize("slots", [1, 2, 3])
def test_never_more_batches_at_once_than_slots_and_every_callers_rows_come_back_in_order(slots):
    engine = _Engine(delay_s=0.05)

    async def run():
        batcher = SlotBatcher(engine, max_batch_size=5, wait_s=0, slots=slots)
        small = [batcher.run([i, i + 1000]) for i in range(12)]
        large = batcher.run(list(range(2000, 2023)))  # 23 items: five batches' worth
        return await asyncio.gather(*small, large)

    *small, large = asyncio.run(run())
    assert engine.most == slots
    assert all(len(batch) <= 5 for batch in engine.batches)
    assert sorted(i for batch in engine.batches for i in batch) == sorted([*range(12), *range(1000, 1012), *range(2000, 2023)])
    assert [rows.ravel().tolist() for rows in small] == [[i, i + 1000] for i in range(12)]
    assert large.ravel().tolist() == list(range(2000, 2023))


def test_the_wait_window_gathers_a_partial_batch_and_a_full_one_goes_at_once():
    engine = _Engine()

    async def run():
        batcher = SlotBatcher(engine, max_batch_size=4, wait_s=0.3, slots=1)
        first = asyncio.create_task(batcher.run([1]))
        await asyncio.sleep(0.02)
        await asyncio.gather(first, batcher.run([2]))
        slow = SlotBatcher(engine, max_batch_size=2, wait_s=60, slots=1)
        return await asyncio.wait_for(slow.run([3, 4]), 10)  # full: no wait

    asyncio.run(run())
    assert engine.batches == [[1, 2], [3, 4]]


def test_an_engine_error_reaches_its_batch_only_and_the_next_batch_runs():
    engine = _Engine(hold_first=True, fail_on=7)

    async def run():
        batcher = SlotBatcher(engine, max_batch_size=8, wait_s=0, slots=1)
        first = asyncio.create_task(batcher.run([0]))
        await _until(lambda: engine.batches)
        failing = [asyncio.create_task(batcher.run([i])) for i in (6, 7)]
        await asyncio.sleep(0.05)
        engine.release.set()
        await first
        outcomes = await asyncio.gather(*failing, return_exceptions=True)
        return outcomes, await batcher.run([9])

    outcomes, after = asyncio.run(run())
    assert all(isinstance(o, RuntimeError) and "failed on 7" in str(o) for o in outcomes)
    assert after.tolist() == [[9.0]]


def test_a_caller_that_went_away_is_not_computed():
    engine = _Engine(hold_first=True)

    async def run():
        batcher = SlotBatcher(engine, max_batch_size=8, wait_s=0, slots=1)
        first = asyncio.create_task(batcher.run([0]))
        await _until(lambda: engine.batches)
        gone = asyncio.create_task(batcher.run([5]))
        kept = asyncio.create_task(batcher.run([6]))
        await asyncio.sleep(0.02)
        gone.cancel()
        engine.release.set()
        await first
        return await kept

    assert asyncio.run(run()).tolist() == [[6.0]]
    assert engine.batches == [[0], [6]]


def test_a_caller_brings_at_least_one_item_and_the_batcher_one_slot():
    batcher = SlotBatcher(_Engine(), max_batch_size=2, wait_s=0, slots=1)
    with pytest.raises(ValueError, match="at least one item"):
        asyncio.run(batcher.run([]))
    with pytest.raises(ValueError):
        SlotBatcher(_Engine(), max_batch_size=2, wait_s=0, slots=0)


def test_a_small_request_sent_while_a_large_one_runs_goes_into_the_next_batch():
    engine = _Engine(hold_first=True)

    async def run():
        batcher = SlotBatcher(engine, max_batch_size=4, wait_s=0, slots=1)
        large = asyncio.create_task(batcher.run(list(range(100, 140))))  # ten batches' worth
        await _until(lambda: engine.batches)  # its first batch runs
        small = asyncio.create_task(batcher.run([1]))
        await asyncio.sleep(0.02)
        engine.release.set()
        return await small, await large

    small, large = asyncio.run(run())
    assert small.tolist() == [[1.0]]
    # The small one is the next batch, alone (FIFO put it behind all nine of the large one's
    # batches; sharing one with them would make it as slow as theirs).
    assert engine.batches[:3] == [[100, 101, 102, 103], [1], [104, 105, 106, 107]]
    assert large.ravel().tolist() == list(range(100, 140))
    assert sorted(i for batch in engine.batches for i in batch) == [1, *range(100, 140)]


def test_small_requests_never_hold_a_large_one_back_for_long():
    engine = _Engine(hold_first=True)

    async def run():
        batcher = SlotBatcher(engine, max_batch_size=4, wait_s=0, slots=1)
        large = asyncio.create_task(batcher.run(list(range(100, 112))))
        await _until(lambda: engine.batches)
        small = [asyncio.create_task(batcher.run([i])) for i in range(1, 10)]  # two batches' worth and more
        await asyncio.sleep(0.02)
        engine.release.set()
        return await large, await asyncio.gather(*small)

    large, small = asyncio.run(run())
    # Batches of the callers new since the last turn alternate with the turns of the others.
    assert engine.batches == [[100, 101, 102, 103], [1, 2, 3, 4], [104, 105, 106, 107], [5, 6, 7, 8],
                              [108, 109, 110, 111], [9]]
    assert large.ravel().tolist() == list(range(100, 112))
    assert [rows.ravel().tolist() for rows in small] == [[i] for i in range(1, 10)]


def test_two_large_requests_take_turns_of_a_batch_each():
    engine = _Engine(hold_first=True)

    async def run():
        batcher = SlotBatcher(engine, max_batch_size=3, wait_s=0, slots=1)
        first = asyncio.create_task(batcher.run(list(range(100, 112))))
        await _until(lambda: engine.batches)
        second = asyncio.create_task(batcher.run(list(range(200, 209))))
        await asyncio.sleep(0.02)
        engine.release.set()
        return await first, await second

    first, second = asyncio.run(run())
    owners = [batch[0] // 100 for batch in engine.batches]
    assert owners == [1, 2, 1, 2, 1, 2, 1]
    assert all(len({i // 100 for i in batch}) == 1 and len(batch) == 3 for batch in engine.batches)
    assert first.ravel().tolist() == list(range(100, 112))
    assert second.ravel().tolist() == list(range(200, 209))


def test_a_large_request_that_went_away_computes_no_more_batches():
    engine = _Engine(hold_first=True)

    async def run():
        batcher = SlotBatcher(engine, max_batch_size=4, wait_s=0, slots=1)
        large = asyncio.create_task(batcher.run(list(range(100, 140))))
        await _until(lambda: engine.batches)
        large.cancel()
        await asyncio.sleep(0.02)
        engine.release.set()
        return await batcher.run([1])

    assert asyncio.run(run()).tolist() == [[1.0]]
    assert engine.batches == [[100, 101, 102, 103], [1]]
