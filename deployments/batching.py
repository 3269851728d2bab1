"""What every @serve.batch method of a task does with its batch: the callers' chunks flattened
into one engine call (in a thread, off the replica's event loop) and the rows split back."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

Item = TypeVar("Item")


async def run_flattened(chunks: Sequence[Sequence[Item]], compute: Callable[[list[Item]], np.ndarray],
                        on_batch: Callable[[int], Any] | None = None) -> list[np.ndarray]:
    """compute(every item of every chunk) once; each chunk's rows back, in order."""
    flat = [item for chunk in chunks for item in chunk]
    if on_batch is not None:
        on_batch(len(flat))
    rows = await asyncio.to_thread(compute, flat)
    out, start = [], 0
    for chunk in chunks:
        out.append(rows[start : start + len(chunk)])
        start += len(chunk)
    return out
