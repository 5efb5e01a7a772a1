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
    ``benchmark.pedantic`` times the rows.

    Each result is freed outside the timed region, as pedantic does: freeing 100 MB is not
    free, and the floor must not pay for it when the rows don't.
    """
    fn = synchronized(fn)
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(rounds):
        start = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - start)
        del result
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
