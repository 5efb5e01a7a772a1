"""Where the noise of a study's paired difference comes from, and what a larger grid detects.

A grid compares a variant with a reference seed by seed: ``d_s`` = the variant's metric minus
the reference's, both trained with seed ``s`` and scored on one test set. ``d_s`` varies over
seeds for two reasons: training (another seed, another network) and evaluation (a finite test
set: 40 identities on the synthetic set). This module separates the two from per-query results:

- :func:`query_results` re-evaluates a run's checkpoint the way the study did
  (:func:`pmm_model.apps.study.evaluate_checkpoint`) and keeps each query's AP and rank-1 hit;
  their means are the run's mAP and rank-1, so the stored metrics are reproduced or not;
- :func:`split_noise` bootstraps the test identities (a query belongs to its identity; the same
  resample for the variant and the reference of a seed): the variance of ``d_s`` over resamples,
  averaged over seeds, is the *evaluation* part; what the seeds vary beyond it is *training*
  (the observed variance over seeds minus the evaluation part, floored at 0);
- :meth:`NoiseSplit.detectable` predicts the smallest difference a grid of ``n`` seeds and
  ``m`` times the test identities detects, (t(0.975, n - 1) + z(0.8)) * sd / sqrt(n) with
  sd^2 = training + evaluation / m, the definition of :mod:`pmm_model.apps.study_report`.

:func:`write_power_report` does it all for a finished grid folder and writes a markdown report
and the per-query results (JSON) beside it; :func:`rewrite_power_report` rebuilds the report
from that JSON alone.

Example:
    >>> rng = np.random.default_rng(0)
    >>> pids = np.repeat(np.arange(40), 3)
    >>> a = {s: rng.random(120) for s in range(8)}
    >>> b = {s: rng.random(120) for s in range(8)}
    >>> split = split_noise(a, b, pids, resamples=500)
    >>> split.seeds, split.identities, split.detectable(8) > split.detectable(24, 5)
    (8, 40, True)
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pmm_model.apps.study import collect_results, run_dir
from pmm_model.apps.study_report import detectable_difference
from pmm_model.data.datasets import build_dataset
from pmm_model.data.loaders import build_test_loaders
from pmm_model.data.occlusion import EVAL_PROTOCOLS, with_protocol
from pmm_model.evaluation.evaluator import extract_features, pairwise_distance
from pmm_model.evaluation.metrics import evaluate_rank
from pmm_model.run.atomic import atomic_write
from pmm_model.run.checkpoint import load_model
from pmm_model.run.folder import CHECKPOINT

__all__ = [
    "NoiseSplit",
    "QueryResults",
    "grid_minutes",
    "query_results",
    "rewrite_power_report",
    "split_noise",
    "write_power_report",
]

# The per-query arrays behind each metric of the study.
METRICS = {"rank1": "hit", "mAP": "ap"}


@dataclass(frozen=True)
class QueryResults:
    """One run's evaluation, query by query (the queries with a valid gallery match, in order).

    Attributes:
        pids: ``(Q,)`` int64, each query's identity.
        ap: ``(Q,)`` float64, its average precision; the mean is the mAP.
        hit: ``(Q,)`` float64, 1.0 where its nearest gallery image is a true match; the mean
            is rank-1.
        seconds: the evaluation's wall time (features and ranking).
    """

    pids: np.ndarray
    ap: np.ndarray
    hit: np.ndarray
    seconds: float

    def metric(self, key: str) -> np.ndarray:
        """The per-query array of ``key`` (``rank1`` or ``mAP``)."""
        if key not in METRICS:
            raise ValueError(f"key must be one of {tuple(METRICS)}, got {key!r}")
        return self.hit if key == "rank1" else self.ap


def query_results(checkpoint: str | Path, protocol: str) -> QueryResults:
    """Per-query AP and rank-1 hit of a run's final checkpoint under ``protocol``, on the CPU.

    The evaluation is :func:`pmm_model.apps.study.evaluate_checkpoint`'s (the checkpoint's data
    set and input size, no flip, no re-ranking, Euclidean distance); each distance row is then
    ranked on its own by :func:`~pmm_model.evaluation.metrics.evaluate_rank`.
    """
    if protocol not in EVAL_PROTOCOLS:
        raise ValueError(f"protocol must be one of {EVAL_PROTOCOLS}, got {protocol!r}")
    tic = time.perf_counter()
    model, config = load_model(checkpoint)
    data = with_protocol(build_dataset(config.data, config.root), protocol)
    query_loader, gallery_loader = build_test_loaders(data, config.height, config.width)
    qf, q_pids, q_cams = extract_features(model, query_loader, "cpu")
    gf, g_pids, g_cams = extract_features(model, gallery_loader, "cpu")
    dist = pairwise_distance(qf, gf)
    # A query without a gallery image of its identity from another camera is not scored.
    valid = ((q_pids[:, None] == g_pids) & (q_cams[:, None] != g_cams)).any(1)
    rows = [
        evaluate_rank(dist[i : i + 1], q_pids[i : i + 1], g_pids, q_cams[i : i + 1], g_cams)
        for i in np.flatnonzero(valid)
    ]
    return QueryResults(
        pids=q_pids[valid],
        ap=np.array([r.mAP for r in rows], dtype=np.float64),
        hit=np.array([r.cmc[0] for r in rows], dtype=np.float64),
        seconds=time.perf_counter() - tic,
    )


@dataclass(frozen=True)
class NoiseSplit:
    """The variance of a paired difference over seeds, split into evaluation and training.

    Attributes:
        seeds: seeds paired.
        identities: test identities resampled.
        mean: the mean paired difference.
        observed: the sample variance (n - 1) of the paired differences over seeds.
        evaluation: the bootstrap variance of a seed's paired difference over resamples of the
            test identities, averaged over seeds.
        interaction: a check of ``evaluation``: the seed x identity residual mean square of the
            per-identity mean differences (a two-way table, seeds x identities), over the
            number of identities. It is the part of the evaluation noise that changes from seed
            to seed; what ``evaluation`` holds beyond it (identity effects that every seed
            shares) moves all seeds' differences alike: a bias of this test set that more
            seeds do not average out. Near ``evaluation``, the split is what the seeds see.
    """

    seeds: int
    identities: int
    mean: float
    observed: float
    evaluation: float
    interaction: float

    @property
    def training(self) -> float:
        """What the seeds vary beyond evaluation: observed - evaluation, floored at 0."""
        return max(self.observed - self.evaluation, 0.0)

    @property
    def evaluation_share(self) -> float:
        """The evaluation part's share of evaluation + training; NaN where the paired
        difference does not vary at all (two variants that score every query alike), which
        leaves nothing to split."""
        total = self.evaluation + self.training
        return self.evaluation / total if total > 0 else math.nan

    def detectable(self, seeds: int, identities: float = 1.0) -> float:
        """The smallest difference detected with 80 % power (two-sided 5 %) by ``seeds`` seeds
        on ``identities`` times the test identities: the evaluation part shrinks as
        1/``identities``, the training part stays."""
        if seeds < 2 or identities <= 0:
            raise ValueError(f"need seeds >= 2 and identities > 0, got {seeds} and {identities}")
        return detectable_difference(math.sqrt(self.training + self.evaluation / identities), seeds)


def split_noise(
    variant: Mapping[int, np.ndarray],
    reference: Mapping[int, np.ndarray],
    pids: np.ndarray,
    resamples: int = 2000,
    seed: int = 0,
) -> NoiseSplit:
    """Split the variance of ``variant - reference`` over seeds (see :class:`NoiseSplit`).

    Args:
        variant: per seed, the variant's per-query metric (``(Q,)``, the order of ``pids``).
        reference: the same for the reference; the seeds both have are paired.
        pids: ``(Q,)`` the queries' identities: the bootstrap resamples identities with
            replacement, each drawn identity bringing all of its queries.
        resamples: bootstrap resamples (the same ones for every seed).
        seed: seeds the numpy generator of the resamples.

    Raises:
        ValueError: fewer than 2 paired seeds or resamples, or arrays not shaped like ``pids``.
    """
    seeds = sorted(set(variant) & set(reference))
    ids, index = np.unique(np.asarray(pids), return_inverse=True)
    if len(seeds) < 2 or len(ids) < 2 or resamples < 2:
        raise ValueError(
            f"need 2 paired seeds, identities and resamples, got {len(seeds)}, {len(ids)} "
            f"and {resamples}"
        )
    per_id = np.bincount(index, minlength=len(ids)).astype(np.float64)
    draws = np.random.default_rng(seed).integers(0, len(ids), size=(resamples, len(ids)))
    # counts[b, i]: how often resample b drew identity i.
    counts = np.stack([np.bincount(row, minlength=len(ids)) for row in draws]).astype(np.float64)
    diffs, within, by_id = [], [], []
    for s in seeds:
        a, b = np.asarray(variant[s], np.float64), np.asarray(reference[s], np.float64)
        if a.shape != index.shape or b.shape != index.shape:
            raise ValueError(
                f"seed {s}: per-query arrays must be shaped like pids {index.shape}, "
                f"got {a.shape} and {b.shape}"
            )
        diffs.append(float(a.mean() - b.mean()))
        per_id_sum = np.bincount(index, weights=a - b, minlength=len(ids))
        within.append(float(np.var(counts @ per_id_sum / (counts @ per_id), ddof=1)))
        by_id.append(per_id_sum / per_id)
    table = np.stack(by_id)
    residual = table - table.mean(1, keepdims=True) - table.mean(0) + table.mean()
    interaction = float((residual**2).sum()) / ((len(seeds) - 1) * (len(ids) - 1)) / len(ids)
    return NoiseSplit(
        seeds=len(seeds),
        identities=len(ids),
        mean=statistics.fmean(diffs),
        observed=statistics.variance(diffs),
        evaluation=statistics.fmean(within),
        interaction=interaction,
    )


def grid_minutes(
    seeds: int,
    variants: int,
    run_seconds: float,
    eval_seconds: Mapping[str, float],
    identities: float = 1.0,
) -> float:
    """CPU minutes of a grid of ``variants`` x ``seeds`` runs, each trained (``run_seconds``,
    its standard evaluation included) and evaluated once per further protocol; with
    ``identities`` times the test identities every evaluation takes that many times as long."""
    extra = sum(eval_seconds.values()) * identities - eval_seconds.get("standard", 0.0)
    return seeds * variants * (run_seconds + extra) / 60


def _collect(
    runs: Path, names: Sequence[str], protocols: Sequence[str]
) -> tuple[dict[str, Any], float, float]:
    """Per-query results of every finished run of ``names``, the largest gap between a
    re-evaluated metric and the stored one, and the median training wall time of the grid."""
    records = {(r.variant, r.seed): r for r in collect_results(runs) if r.status == "done"}
    for name in names:
        if sum(v == name for v, _ in records) < 2:
            raise ValueError(f"variants: {name!r} has fewer than 2 finished runs in {runs}")
    table: dict[str, Any] = {}
    worst = 0.0
    for protocol in protocols:
        found: dict[str, Any] = {"runs": {}}
        for name in names:
            for seed in sorted(s for v, s in records if v == name):
                q = query_results(run_dir(runs, name, seed) / CHECKPOINT, protocol)
                stored = records[name, seed].metrics_for(protocol)
                worst = max([worst, *(abs(q.metric(k).mean() - stored[k]) for k in METRICS)])
                # The scored queries depend on the data set alone: one list for every run.
                if found.setdefault("pids", q.pids.tolist()) != q.pids.tolist():
                    raise ValueError(f"{name} seed {seed}: other queries than the first run's")
                found["runs"].setdefault(name, {})[str(seed)] = {
                    "ap": q.ap.tolist(),
                    "hit": q.hit.astype(int).tolist(),
                    "seconds": q.seconds,
                }
        table[protocol] = found
    walls = [r.wall_seconds for r in records.values() if r.wall_seconds is not None]
    return table, float(worst), statistics.median(walls)


def _splits(
    table: Mapping[str, Any], names: Sequence[str], resamples: int, seed: int
) -> dict[tuple[str, str, str], NoiseSplit]:
    """(protocol, variant, metric) -> the split of variant minus ``names[0]``."""
    splits = {}
    for protocol, found in table.items():
        for variant in names[1:]:
            for key, field in METRICS.items():
                a, b = (
                    {int(s): np.array(r[field], np.float64) for s, r in found["runs"][n].items()}
                    for n in (variant, names[0])
                )
                splits[protocol, variant, key] = split_noise(
                    a, b, np.array(found["pids"]), resamples, seed
                )
    return splits


def _percent(share: float) -> str:
    return "no variance" if math.isnan(share) else f"{100 * share:.0f} %"


def _markdown(
    splits: Mapping[tuple[str, str, str], NoiseSplit],
    names: Sequence[str],
    protocols: Sequence[str],
    run_seconds: float,
    eval_seconds: Mapping[str, float],
    resamples: int,
    seed: int,
) -> str:
    def sd(variance: float) -> str:
        return f"{100 * math.sqrt(variance):.1f}"

    reference, primary = names[0], names[1]
    lines = [
        "# Where the noise of the paired difference comes from",
        "",
        f"Per seed s, d_s = metric(variant, s) - metric({reference}, s). Evaluation: the "
        f"variance of d_s over {resamples} bootstrap resamples of the test identities (numpy "
        f"seed {seed}; each drawn identity brings its queries, the same draw for both runs of "
        "a seed), averaged over seeds. Training: the observed variance of d_s over seeds minus "
        "the evaluation part, floored at 0. Check: the seed x identity interaction's part of "
        "the evaluation noise (the part that changes from seed to seed); near the bootstrap's, "
        "the noise of this test set that all seeds share is small. Standard deviations in "
        "points (percentage points of rank-1 or mAP).",
        "",
        "| protocol | difference | metric | mean | sd observed | sd evaluation | "
        "sd seed x identity (check) | sd training | evaluation share of the variance |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (protocol, variant, key), s in splits.items():
        lines.append(
            f"| {protocol} | {variant} - {reference} | {key} | {100 * s.mean:+.1f} | "
            f"{sd(s.observed)} | {sd(s.evaluation)} | {sd(s.interaction)} | {sd(s.training)} "
            f"| {_percent(s.evaluation_share)} |"
        )
    heads = [f"{p} {k}" for p in protocols for k in METRICS]
    lines += [
        "",
        f"Predicted detectable difference of {primary} - {reference} (points; 80 % power, "
        "two-sided 5 %; sd^2 = training + evaluation / m) with n seeds and m times the test "
        "identities, and the CPU minutes of a grid of the 2 variants of the comparison and of "
        f"5 (the committed grid's): a run takes {run_seconds:.0f} s (the grid's median wall "
        "time, its standard evaluation included) and one more evaluation "
        + ", ".join(f"{s:.1f} s ({p})" for p, s in eval_seconds.items())
        + " (the fastest re-evaluation), m times as long with m times the identities (making "
        "the larger test set once is not counted).",
        "",
        f"| n | m | {' | '.join(heads)} | minutes, 2 variants | minutes, 5 variants |",
        f"|---|---|{'---|' * len(heads)}---|---|",
    ]
    for n in (8, 16, 24):
        for m in (1, 2, 5):
            cells = [f"{100 * splits[p, primary, k].detectable(n, m):.1f}" for p in protocols
                     for k in METRICS]  # fmt: skip
            minutes = [f"{grid_minutes(n, v, run_seconds, eval_seconds, m):.0f}" for v in (2, 5)]
            lines.append(f"| {n} | {m} | {' | '.join(cells + minutes)} |")
    return "\n".join(lines) + "\n"


def write_power_report(
    runs: str | Path,
    out: str | Path,
    variants: Sequence[str] = ("pmm-a_hard_mix",),
    reference: str = "pmm-none",
    protocols: Sequence[str] = EVAL_PROTOCOLS,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[Path, Path, float]:
    """Re-evaluate a finished grid query by query and write the noise report.

    Writes ``out`` (markdown: the split per protocol, metric and variant minus ``reference``,
    and the predicted detectable difference of the first variant for larger grids) and
    ``out`` with the suffix ``.json`` (the report's numbers and the per-query results, from
    which :func:`rewrite_power_report` rebuilds the report without the checkpoints).

    Returns:
        The two paths and the largest absolute gap between a re-evaluated metric (rank-1,
        mAP) and the one the grid stored: 0 when the evaluation is reproduced exactly.

    Raises:
        StudyError: ``runs`` holds no grid.
        ValueError: no variant besides ``reference``, or one with fewer than 2 finished runs.
    """
    names = [reference, *dict.fromkeys(v for v in variants if v != reference)]
    if len(names) < 2:
        raise ValueError(f"variants: name one besides the reference {reference!r}")
    table, worst, run_seconds = _collect(Path(runs), names, protocols)
    eval_seconds = {
        p: min(r["seconds"] for runs_of in found["runs"].values() for r in runs_of.values())
        for p, found in table.items()
    }
    numbers = {
        "runs": str(runs),
        "reference": reference,
        "max_gap_to_stored": worst,
        "run_seconds": run_seconds,
        "eval_seconds": eval_seconds,
        "per_query": table,
    }
    return _write(numbers, Path(out), resamples, seed)


def rewrite_power_report(
    numbers: str | Path, out: str | Path, resamples: int = 2000, seed: int = 0
) -> tuple[Path, Path, float]:
    """:func:`write_power_report`'s report again from the ``.json`` it wrote (``numbers``):
    the same per-query results, times and gap, no checkpoint needed.

    Raises:
        ValueError: ``numbers`` is not such a file.
    """
    found = json.loads(Path(numbers).read_text())
    keys = ("runs", "reference", "max_gap_to_stored", "run_seconds", "eval_seconds", "per_query")
    if not isinstance(found, dict) or not all(k in found for k in keys):
        raise ValueError(f"per_query: {str(numbers)!r} is not the .json of a power report")
    return _write(found, Path(out), resamples, seed)


def _write(
    numbers: dict[str, Any], out: Path, resamples: int, seed: int
) -> tuple[Path, Path, float]:
    table, reference = numbers["per_query"], numbers["reference"]
    names = [reference, *(v for v in next(iter(table.values()))["runs"] if v != reference)]
    splits = _splits(table, names, resamples, seed)
    text = _markdown(
        splits, names, list(table), numbers["run_seconds"], numbers["eval_seconds"], resamples,
        seed,
    )  # fmt: skip
    count = sum(len(r) for found in table.values() for r in found["runs"].values())
    text += (
        f"\nRe-evaluated: {count} evaluations (runs x protocols) of the grid in "
        f"{numbers['runs']}; their per-query means differ from the rank-1 and mAP the grid "
        f"stored by at most {numbers['max_gap_to_stored']:.1e}.\n"
    )
    numbers = numbers | {
        "splits": {"/".join(k): asdict(s) | {"training": s.training} for k, s in splits.items()}
    }
    data = out.with_suffix(".json")
    atomic_write(out, lambda f: f.write(text.encode()))
    atomic_write(data, lambda f: f.write((json.dumps(numbers) + "\n").encode()))
    return out, data, float(numbers["max_gap_to_stored"])
