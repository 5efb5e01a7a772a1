"""The benchmarks' floors are timed as ``benchmark.pedantic`` times the rows they divide.

A row's ``x_clone`` is its pedantic median over a ``clone()`` timed by
:func:`benchmarks.timing.round_seconds`. Pedantic keeps each round's result alive through the
next round's call; a floor timed with each result freed first writes into the block it just
freed, warm in the cache, and every ratio to it comes out too large.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

from benchmarks.timing import round_seconds


class _Output:
    """A call's result, whose lifetime the test follows."""


def _outputs_alive_during_each_call(time_calls: Callable[[Callable[[], object]], object]):
    """How many earlier results are alive at the start of each call that ``time_calls`` makes."""
    earlier: list[weakref.ref] = []
    alive: list[int] = []

    def call() -> _Output:
        alive.append(sum(ref() is not None for ref in earlier))
        output = _Output()
        earlier.append(weakref.ref(output))
        return output

    time_calls(call)
    return alive


def test_floor_calls_see_the_results_that_pedantic_calls_see(benchmark):
    pedantic = _outputs_alive_during_each_call(
        lambda call: benchmark.pedantic(call, rounds=5, iterations=1, warmup_rounds=2)
    )
    floor = _outputs_alive_during_each_call(lambda call: round_seconds(call, rounds=5, warmup=2))
    # Warmup results are dropped at once; from the second timed round on, the previous one lives.
    assert pedantic == [0, 0, 0, 1, 1, 1, 1]
    assert floor == pedantic
