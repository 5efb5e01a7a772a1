"""The study's statistics against independent computations: Student-t intervals, pairing."""

from __future__ import annotations

import math
import statistics

import pytest

from pmm_model.apps.study_report import paired_difference, t_quantile_975


@pytest.mark.parametrize(("df", "quantile"), [(1, 12.706), (4, 2.776), (9, 2.262), (30, 2.042)])
def test_t_quantiles_are_the_table(df: int, quantile: float) -> None:
    assert t_quantile_975(df) == quantile


def test_t_quantile_beyond_the_table_approaches_the_normal() -> None:
    # Published: t(0.975, 40) = 2.021, t(0.975, 120) = 1.980.
    assert t_quantile_975(40) == pytest.approx(2.021, abs=2e-3)
    assert t_quantile_975(120) == pytest.approx(1.980, abs=1e-3)
    with pytest.raises(ValueError, match="df must be >= 1, got 0"):
        t_quantile_975(0)


def test_paired_difference_pairs_by_seed() -> None:
    variant = {0: 0.80, 1: 0.70, 2: 0.90, 5: 0.10}  # seed 5 has no reference: left out
    reference = {0: 0.75, 1: 0.72, 2: 0.81, 3: 0.99}  # seed 3 has no variant: left out
    d = paired_difference(variant, reference)
    diffs = [0.80 - 0.75, 0.70 - 0.72, 0.90 - 0.81]
    mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
    half = 4.303 * sd / math.sqrt(3)
    assert (d.n, d.mean, d.sd) == (3, pytest.approx(mean), pytest.approx(sd))
    assert (d.low, d.high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert d.detectable == pytest.approx((4.303 + 0.8416) * sd / math.sqrt(3))


def test_paired_difference_below_two_pairs_has_no_interval() -> None:
    one = paired_difference({0: 0.5}, {0: 0.25, 1: 0.5})
    assert one.n == 1 and one.mean == 0.25 and math.isnan(one.low) and math.isnan(one.sd)
    none = paired_difference({0: 0.5}, {1: 0.5})
    assert none.n == 0 and math.isnan(none.mean)
