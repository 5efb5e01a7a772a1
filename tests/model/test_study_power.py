"""The noise split of a paired difference on per-query arrays whose answer is known."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest

from pmm_model.apps.study_power import NoiseSplit, grid_minutes, rewrite_power_report, split_noise
from pmm_model.apps.study_report import detectable_difference, paired_difference

IDS, PER_ID, SEEDS = 40, 3, 8
PIDS = np.repeat(np.arange(100, 100 + IDS), PER_ID)  # identity labels need not start at 0


def _per_seed(rng: np.random.Generator, seeds: int = SEEDS) -> dict[int, np.ndarray]:
    return {s: rng.random(IDS * PER_ID) for s in range(seeds)}


def test_identical_training_outcomes_leave_only_evaluation_noise() -> None:
    # Every seed's per-query difference is the same array: d_s does not vary over seeds, yet
    # the test set it was measured on is finite, so all of its noise is evaluation.
    rng = np.random.default_rng(0)
    a, b = rng.random(IDS * PER_ID), rng.random(IDS * PER_ID)
    split = split_noise({s: a for s in range(SEEDS)}, {s: b for s in range(SEEDS)}, PIDS)
    assert split.observed == pytest.approx(0.0, abs=1e-20)
    assert split.training == 0.0 and split.evaluation_share == 1.0
    # The bootstrap variance of a mean of 40 identity means is about their variance / 40.
    per_id = (a - b).reshape(IDS, PER_ID).mean(1)
    assert split.evaluation == pytest.approx(np.var(per_id) / IDS, rel=0.15)
    assert split.detectable(8, 5) == pytest.approx(split.detectable(8) / math.sqrt(5))
    # ... and none of it changes from seed to seed: it is this test set's, shared by all seeds.
    assert split.interaction == pytest.approx(0.0, abs=1e-20)


def test_no_query_noise_leaves_only_training_noise() -> None:
    # Within a seed all queries agree (the difference is a constant per seed): resampling
    # identities changes nothing, and the seeds' spread is all training.
    shifts = [0.03, -0.01, 0.05, 0.0, 0.02, -0.04, 0.01, 0.06]
    base = np.random.default_rng(1).random(IDS * PER_ID)
    split = split_noise(
        {s: base + d for s, d in enumerate(shifts)}, {s: base for s in range(SEEDS)}, PIDS
    )
    assert split.evaluation == pytest.approx(0.0, abs=1e-20)
    assert split.observed == pytest.approx(statistics.variance(shifts))
    assert split.training == pytest.approx(split.observed)
    assert split.evaluation_share == pytest.approx(0.0, abs=1e-12)
    assert split.mean == pytest.approx(statistics.fmean(shifts))
    # More test identities cannot help; the eight seeds' detectable difference is the study's.
    assert split.detectable(8, 5) == pytest.approx(split.detectable(8))
    d = paired_difference(
        {s: float((base + x).mean()) for s, x in enumerate(shifts)},
        {s: float(base.mean()) for s in range(SEEDS)},
    )
    assert split.detectable(8) == pytest.approx(d.detectable)


def test_both_sources_add_up_and_the_seed_part_is_recovered() -> None:
    # Known training sd 0.05 per seed on top of independent per-query noise: the split finds
    # the training part near 0.05^2 and the evaluation part near the per-query noise's.
    rng = np.random.default_rng(2)
    seeds = 200
    shift = rng.normal(0.0, 0.05, seeds)
    a = {s: rng.normal(shift[s], 0.3, IDS * PER_ID) for s in range(seeds)}
    b = {s: np.zeros(IDS * PER_ID) for s in range(seeds)}
    split = split_noise(a, b, PIDS, resamples=500)
    assert split.evaluation == pytest.approx(0.3**2 / (IDS * PER_ID), rel=0.1)
    assert math.sqrt(split.training) == pytest.approx(0.05, rel=0.2)
    assert split.training + split.evaluation == pytest.approx(split.observed)
    # Fresh query noise for every seed: all of the evaluation part changes with the seed.
    assert split.interaction == pytest.approx(split.evaluation, rel=0.1)


def test_a_query_goes_with_its_identity() -> None:
    # The three queries of an identity move together: resampling single queries would find
    # three times less variance than resampling identities does.
    rng = np.random.default_rng(3)
    per_id = np.repeat(rng.normal(0.0, 1.0, IDS), PER_ID)
    zero = np.zeros(IDS * PER_ID)
    grouped = split_noise({0: per_id, 1: per_id}, {0: zero, 1: zero}, PIDS)
    assert grouped.evaluation == pytest.approx(np.var(per_id[::PER_ID]) / IDS, rel=0.15)
    singles = split_noise({0: per_id, 1: per_id}, {0: zero, 1: zero}, np.arange(IDS * PER_ID))
    assert grouped.evaluation / singles.evaluation == pytest.approx(PER_ID, rel=0.2)


def test_the_split_is_seeded_and_pairs_by_seed() -> None:
    rng = np.random.default_rng(4)
    a, b = _per_seed(rng), _per_seed(rng)
    first, again = split_noise(a, b, PIDS, seed=7), split_noise(a, b, PIDS, seed=7)
    assert first == again
    assert split_noise(a, b, PIDS, seed=8).evaluation != first.evaluation
    # A seed only one side has is left out.
    extra = split_noise(a | {99: np.ones(IDS * PER_ID)}, b, PIDS, seed=7)
    assert extra == first


def test_bad_input_is_refused() -> None:
    rng = np.random.default_rng(5)
    a, b = _per_seed(rng, 2), _per_seed(rng, 2)
    with pytest.raises(ValueError, match="need 2 paired seeds, identities and resamples, got 1,"):
        split_noise({0: a[0]}, b, PIDS)
    with pytest.raises(ValueError, match="identities and resamples, got 2, 1 and 2000"):
        split_noise(a, b, np.zeros(IDS * PER_ID, dtype=int))
    with pytest.raises(ValueError, match=r"seed 0: per-query arrays must be shaped like pids"):
        split_noise({0: a[0][:5], 1: a[1]}, b, PIDS)
    with pytest.raises(ValueError, match=r"need seeds >= 2 and identities > 0, got 1 and 1\.0"):
        NoiseSplit(8, 40, 0.0, 1.0, 0.5, 0.5).detectable(1)


def test_detectable_shrinks_with_seeds_and_identities_as_predicted() -> None:
    split = NoiseSplit(8, 40, 0.0, observed=0.004, evaluation=0.003, interaction=0.003)
    assert split.training == pytest.approx(0.001)
    assert split.evaluation_share == pytest.approx(0.75)
    assert split.detectable(16, 2) == pytest.approx(detectable_difference(math.sqrt(0.0025), 16))
    # Evaluation below what the seeds show cannot exceed it: observed < evaluation floors it.
    noisy = NoiseSplit(8, 40, 0.0, observed=0.002, evaluation=0.003, interaction=0.003)
    assert noisy.training == 0.0 and noisy.evaluation_share == 1.0


def test_variants_that_score_every_query_alike_leave_nothing_to_split(tmp_path) -> None:
    # A tiny grid can do this (both variants find every query): no variance at all, so no
    # share of it. The report says so instead of dividing by zero.
    a = np.random.default_rng(7).random(IDS * PER_ID)
    split = split_noise({s: a for s in range(SEEDS)}, {s: a for s in range(SEEDS)}, PIDS)
    assert split.observed == split.evaluation == split.training == 0.0
    assert math.isnan(split.evaluation_share) and split.detectable(8) == 0.0
    numbers = _numbers(np.random.default_rng(8))
    runs = numbers["per_query"]["occluded"]["runs"]
    runs["pmm-a_hard_mix"] = runs["pmm-none"]
    (tmp_path / "numbers.json").write_text(json.dumps(numbers))
    out, _, _ = rewrite_power_report(tmp_path / "numbers.json", tmp_path / "power.md", 50)
    row = next(line for line in out.read_text().splitlines() if line.startswith("| occluded |"))
    assert row.endswith("| 0.0 | no variance |")


def test_grid_minutes_counts_runs_and_scaled_evaluations() -> None:
    evals = {"standard": 4.0, "occluded": 3.0}
    # 2 variants x 8 seeds x (120 s training with its standard evaluation + 3 s occluded).
    assert grid_minutes(8, 2, 120.0, evals) == pytest.approx(16 * 123 / 60)
    # Five times the identities: the evaluations take 5x (the standard one's extra 4 x 4 s).
    assert grid_minutes(8, 2, 120.0, evals, 5) == pytest.approx(16 * (120 + 16 + 15) / 60)


def _numbers(rng: np.random.Generator) -> dict:
    """What write_power_report saves, for two variants whose training outcomes are identical:
    every seed has the same per-query results, so all of the seeds' noise is evaluation."""
    none, mixed = rng.random(IDS * PER_ID), rng.random(IDS * PER_ID)
    hits = [(rng.random(IDS * PER_ID) < p).astype(int).tolist() for p in (0.5, 0.6)]

    def run(ap: np.ndarray, hit: list[int], s: int) -> dict:
        return {"ap": (ap + s / 100).tolist(), "hit": hit, "seconds": 3.0}

    runs = {
        "pmm-none": {str(s): run(none, hits[0], s) for s in range(SEEDS)},
        "pmm-a_hard_mix": {str(s): run(mixed, hits[1], s) for s in range(SEEDS)},
    }
    return {
        "runs": "runs/grid",
        "reference": "pmm-none",
        "max_gap_to_stored": 0.0,
        "run_seconds": 120.0,
        "eval_seconds": {"occluded": 3.0},
        "per_query": {"occluded": {"pids": PIDS.tolist(), "runs": runs}},
    }


def test_the_report_is_rebuilt_from_its_numbers(tmp_path) -> None:
    numbers = tmp_path / "numbers.json"
    numbers.write_text(json.dumps(_numbers(np.random.default_rng(6))))
    out, data, gap = rewrite_power_report(numbers, tmp_path / "power.md", resamples=200)
    text = out.read_text()
    # Both variants gain the same s / 100 per seed: the differences do not move over seeds.
    row = next(line for line in text.splitlines() if line.startswith("| occluded |"))
    assert row.endswith("| 0.0 | 100 % |") and "| pmm-a_hard_mix - pmm-none | rank1 |" in row
    # 8 seeds at m = 1 are the committed grid: 2 variants x 8 x (120 s + 3 s) = 33 minutes.
    committed = next(line for line in text.splitlines() if line.startswith("| 8 | 1 |"))
    assert committed.endswith("| 33 | 82 |")
    assert gap == 0.0 and "by at most 0.0e+00" in text
    saved = json.loads(data.read_text())
    assert saved["splits"]["occluded/pmm-a_hard_mix/mAP"]["training"] == 0.0
    # The report rebuilt from what it wrote is the same report.
    again, _, _ = rewrite_power_report(data, tmp_path / "again.md", resamples=200)
    assert again.read_text() == text
    numbers.write_text("[]")
    with pytest.raises(ValueError, match=r"is not the \.json of a power report"):
        rewrite_power_report(numbers, tmp_path / "x.md")
