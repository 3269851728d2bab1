"""What the batch-concurrency tests of the encoder-style engines share: a slow stand-in that
records how many batches ran at once, and a check that an engine computes the same rows with two
threads calling it at once as one call at a time gave."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np


class BatchRecorder:
    """Each batch takes 50 ms inside `batch(size)`; `most` is the most that ran at once."""

    def __init__(self, concurrency: int):
        self.concurrency = concurrency
        self.running = self.most = 0
        self.batches: list[int] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def batch(self, size: int) -> Iterator[None]:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.batches.append(size)
        time.sleep(0.05)
        try:
            yield
        finally:
            with self._lock:
                self.running -= 1


def assert_same_rows_from_two_threads(compute: Callable[[Any], np.ndarray], batches: list, expected: list[np.ndarray],
                                      calls: int = 20) -> None:
    """Two threads each call compute() `calls` times on alternating batches (so two infer requests
    are busy at once); every answer must equal `expected` for its batch."""
    results: dict[int, list[np.ndarray]] = {}

    def work(i: int) -> None:
        results[i] = [compute(batches[(i + n) % 2]) for n in range(calls)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [0, 1]
    for i, rows in results.items():
        for n, got in enumerate(rows):
            np.testing.assert_allclose(got, expected[(i + n) % 2], atol=1e-5)
