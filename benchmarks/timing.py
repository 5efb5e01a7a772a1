"""Timing shared by the benchmark rows: a mean over rounds, as ``benchmark.pedantic`` times."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

ON_GPU = torch.cuda.is_available()


def synchronized(fn: Callable[[], object]) -> Callable[[], object]:
    """Time kernels, not launches: wait for the device after each call."""
    if not ON_GPU:
        return fn

    def run():
        result = fn()
        torch.cuda.synchronize()
        return result

    return run


ROUNDS, WARMUP_ROUNDS = 10, 2


def round_seconds(
    fn: Callable[[], object], rounds: int = ROUNDS, warmup: int = WARMUP_ROUNDS
) -> list[float]:
    """Seconds of each of ``rounds`` calls after ``warmup`` calls, timed as
    ``benchmark.pedantic`` times the rows (``iterations=1``).

    Pedantic keeps each round's result until the next round's replaces it, so every timed call
    runs while its predecessor's output is alive (a 25-100 MB output is then written to a buffer
    other than the one just freed) and frees that output outside the timed region. A floor must
    be timed in that state too: freeing each result before the next call would let a
    ``clone()`` write into the block it just freed, warm in the cache, and make every row's
    ratio to it larger than the work it measures (docs/performance.md#measured-on-this-machine).
    """
    fn = synchronized(fn)
    for _ in range(warmup):
        fn()
    seconds = []
    held = None
    for _ in range(rounds):
        start = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - start)
        held = result  # frees the previous round's result, after the timer, as pedantic does
        del result
    del held
    return seconds


def mean_seconds(
    fn: Callable[[], object], rounds: int = ROUNDS, warmup: int = WARMUP_ROUNDS
) -> float:
    """Mean seconds per call (:func:`round_seconds`), as pytest-benchmark's ``mean``."""
    return statistics.fmean(round_seconds(fn, rounds, warmup))


def median_seconds(
    fn: Callable[[], object], rounds: int = ROUNDS, warmup: int = WARMUP_ROUNDS
) -> float:
    """Median seconds per call (:func:`round_seconds`), as pytest-benchmark's ``median``."""
    return statistics.median(round_seconds(fn, rounds, warmup))
