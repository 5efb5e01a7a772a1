"""The study's report: per-variant statistics, paired differences with intervals, the chart.

:func:`write_report` rebuilds ``<out>/study.md`` and ``<out>/study.png`` from a grid's files
alone (:func:`pmm_model.apps.study.collect_results`). Per protocol it gives the mean and sample
standard deviation over seeds of each variant (:func:`summarize`), then the paired differences
of each variant against the references ``baseline`` and ``pmm-none`` (:func:`paired_difference`):
per seed, the variant's metric minus the reference's with the same seed (the same data order),
their mean with a 95 % Student-t interval, and the smallest difference the grid could detect
(80 % power, two-sided 5 %), from the spread it measured.

Example:
    >>> d = paired_difference({0: 0.80, 1: 0.75, 2: 0.78}, {0: 0.76, 1: 0.74, 2: 0.73})
    >>> round(d.mean, 4), d.n, round(d.low, 3), round(d.high, 3)
    (0.0333, 3, -0.018, 0.085)
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pmm_model.apps.plots import plot_bars
from pmm_model.apps.study import STUDY, VARIANTS, RunRecord, collect_results
from pmm_model.data.occlusion import EVAL_PROTOCOLS
from pmm_model.evaluation.metrics import METRIC_KEYS
from pmm_model.run.atomic import atomic_write

__all__ = [
    "CHART",
    "REFERENCES",
    "TABLE",
    "PairedDifference",
    "VariantSummary",
    "detectable_difference",
    "markdown_table",
    "paired_difference",
    "paired_table",
    "summarize",
    "t_quantile_975",
    "write_report",
]

TABLE, CHART = "study.md", "study.png"
# The variants every other one is compared with, seed by seed.
REFERENCES = ("baseline", "pmm-none")
# Student's t, 0.975 quantile, for 1..30 degrees of freedom (any statistics table).
_T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
# The normal 0.80 quantile: the power term of the detectable difference.
_Z_80 = 0.8416


def t_quantile_975(df: int) -> float:
    """Student's t 0.975 quantile: the table to 30 degrees of freedom, beyond it the normal
    quantile with its first Cornish-Fisher correction (error below 1e-3).

    Example:
        >>> t_quantile_975(7), round(t_quantile_975(1000), 3)
        (2.365, 1.962)
    """
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if df <= len(_T_975):
        return _T_975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df)


def detectable_difference(sd: float, n: int) -> float:
    """The smallest true difference that ``n`` paired seeds whose differences have standard
    deviation ``sd`` find with 80 % power at a two-sided 5 % level:
    (t(0.975, n - 1) + z(0.8)) * sd / sqrt(n).

    Example:
        >>> round(detectable_difference(1.0, 8), 3)
        1.134
    """
    return (t_quantile_975(n - 1) + _Z_80) * sd / math.sqrt(n)


@dataclass(frozen=True)
class PairedDifference:
    """A variant minus a reference over the seeds both finished.

    Attributes:
        n: seeds paired.
        mean: the mean difference (NaN without a pair).
        sd: the sample standard deviation of the differences (NaN below 2 pairs).
        low, high: the 95 % interval of the mean difference (NaN below 2 pairs).
        detectable: the smallest true difference the grid finds with 80 % power at a two-sided
            5 % level, (t(0.975, n - 1) + z(0.8)) * sd / sqrt(n) (NaN below 2 pairs).
    """

    n: int
    mean: float
    sd: float
    low: float
    high: float
    detectable: float


def paired_difference(
    values: Mapping[int, float], reference: Mapping[int, float]
) -> PairedDifference:
    """``values`` minus ``reference``, paired by seed (the keys both have)."""
    seeds = sorted(set(values) & set(reference))
    diffs = np.array([values[s] - reference[s] for s in seeds], dtype=np.float64)
    n = len(diffs)
    if n < 2:
        mean = float(diffs.mean()) if n else math.nan
        return PairedDifference(n, mean, math.nan, math.nan, math.nan, math.nan)
    mean, sd = float(diffs.mean()), float(diffs.std(ddof=1))
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return PairedDifference(n, mean, sd, mean - half, mean + half, detectable_difference(sd, n))


@dataclass(frozen=True)
class VariantSummary:
    """A variant's row of the table: statistics over its finished seeds.

    Attributes:
        variant: the variant's name.
        done: seeds whose run finished (and was evaluated under the protocol), in order.
        failed: seeds whose run failed or was interrupted.
        missing: planned seeds with no result yet.
        mean, std: per metric (``rank1``, ``mAP``, ``mINP``, ``wall_seconds``), the mean and
            the sample standard deviation (n - 1) over ``done``; NaN where undefined (no run;
            one run for the deviation).
    """

    variant: str
    done: tuple[int, ...]
    failed: tuple[int, ...]
    missing: tuple[int, ...]
    mean: dict[str, float]
    std: dict[str, float]


def summarize(records: Iterable[RunRecord], protocol: str = "standard") -> list[VariantSummary]:
    """One :class:`VariantSummary` per variant of ``records`` (in :data:`VARIANTS` order),
    over the runs evaluated under ``protocol``."""
    records = list(records)
    rows = []
    for variant in VARIANTS:
        mine = [r for r in records if r.variant == variant]
        if not mine:
            continue
        done = [r for r in mine if r.status == "done" and r.metrics_for(protocol)]
        mean, std = {}, {}
        for key in (*METRIC_KEYS, "wall_seconds"):
            values = np.array(
                [
                    r.wall_seconds if key == "wall_seconds" else r.metrics_for(protocol)[key]
                    for r in done
                ],
                dtype=np.float64,
            )
            mean[key] = float(values.mean()) if len(values) else math.nan
            std[key] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        rows.append(
            VariantSummary(
                variant,
                tuple(r.seed for r in done),
                tuple(r.seed for r in mine if r.status in ("failed", "interrupted")),
                tuple(r.seed for r in mine if r.status in ("missing", "done") and r not in done),
                mean,
                std,
            )
        )
    return rows


def _cell(mean: float, std: float, scale: float, digits: int) -> str:
    if math.isnan(mean):
        return "n/a"
    if math.isnan(std):
        return f"{scale * mean:.{digits}f}"
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def markdown_table(rows: Sequence[VariantSummary]) -> str:
    """The markdown table of :func:`summarize`'s rows (percentages; ``mean ± std``)."""
    lines = [
        "| variant | seeds done | rank-1 (%) | mAP (%) | mINP (%) | wall time per run (s) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        seeds = f"{len(row.done)}/{len(row.done) + len(row.failed) + len(row.missing)}"
        notes = [
            f"failed: {', '.join(map(str, row.failed))}" if row.failed else "",
            f"not run: {', '.join(map(str, row.missing))}" if row.missing else "",
        ]
        seeds += "".join(f" ({note})" for note in notes if note)
        cells = [_cell(row.mean[k], row.std[k], 100, 1) for k in METRIC_KEYS]
        wall = _cell(row.mean["wall_seconds"], row.std["wall_seconds"], 1, 0)
        lines.append(f"| {row.variant} | {seeds} | {' | '.join(cells)} | {wall} |")
    return "\n".join(lines) + "\n"


def _by_seed(records: Sequence[RunRecord], variant: str, protocol: str, key: str) -> dict:
    return {
        r.seed: r.metrics_for(protocol)[key]
        for r in records
        if r.variant == variant and r.status == "done" and r.metrics_for(protocol)
    }


def _interval(d: PairedDifference) -> str:
    if d.n == 0:
        return "n/a"
    if d.n < 2:
        return f"{100 * d.mean:+.1f} (1 seed)"
    return f"{100 * d.mean:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]"


def paired_table(records: Sequence[RunRecord], protocol: str) -> str:
    """Each variant minus each reference under ``protocol``: rank-1 and mAP differences in
    points with their 95 % intervals, the seeds paired and the detectable difference."""
    variants = [v for v in VARIANTS if any(r.variant == v for r in records)]
    lines = [
        "| variant | minus | seeds | rank-1 (points, 95 % CI) | mAP (points, 95 % CI) "
        "| detectable rank-1 / mAP |",
        "|---|---|---|---|---|---|",
    ]
    for reference in (r for r in REFERENCES if r in variants):
        for variant in (v for v in variants if v != reference):
            diffs = {
                key: paired_difference(
                    _by_seed(records, variant, protocol, key),
                    _by_seed(records, reference, protocol, key),
                )
                for key in ("rank1", "mAP")
            }
            detectable = " / ".join(
                "n/a" if math.isnan(d.detectable) else f"{100 * d.detectable:.1f}"
                for d in diffs.values()
            )
            lines.append(
                f"| {variant} | {reference} | {diffs['rank1'].n} | {_interval(diffs['rank1'])} "
                f"| {_interval(diffs['mAP'])} | {detectable} |"
            )
    return "\n".join(lines) + "\n"


def _chart(rows: Sequence[VariantSummary], path: Path, title: str) -> None:
    names = {"rank1": "rank-1", "mAP": "mAP", "mINP": "mINP"}
    plot_bars(
        path,
        [row.variant for row in rows],
        {
            names[key]: (
                [100 * row.mean[key] for row in rows],
                [100 * row.std[key] for row in rows],
            )
            for key in METRIC_KEYS
        },
        ylabel="% (mean ± std over seeds)",
        ylim=(0, 100),
        title=title,
    )


def write_report(out: str | Path) -> tuple[Path, Path]:
    """Write ``<out>/study.md`` and ``<out>/study.png`` from the grid's files alone.

    The table has one section per protocol some run was evaluated under (the standard one
    always), each with the per-variant statistics and the paired differences; the chart shows
    the standard protocol.

    Returns:
        The paths of the table and the chart.

    Raises:
        StudyError: ``out`` holds no grid.
    """
    out = Path(out)
    records = collect_results(out)
    settings = json.loads((out / STUDY).read_text())["settings"]
    seeds = sorted({r.seed for r in records})
    total = sum(r.wall_seconds or 0.0 for r in records if r.status == "done")
    about = (
        f"{settings['data']}, {settings['backbone']} at {settings['height']}x"
        f"{settings['width']}, {settings['epochs']} epochs, seeds {seeds}"
    )
    protocols = [
        p for p in EVAL_PROTOCOLS if p == "standard" or any(r.metrics_for(p) for r in records)
    ]
    sections = []
    for protocol in protocols:
        sections.append(
            f"## {protocol} queries\n\n{markdown_table(summarize(records, protocol))}\n"
            f"Paired by seed, variant minus reference (points):\n\n"
            f"{paired_table(records, protocol)}"
        )
    text = (
        "\n".join(sections) + f"\nMean ± sample standard deviation over the finished seeds; "
        f"differences: mean over the seeds both finished, with a 95 % Student-t interval; "
        f"detectable: (t + 0.84) x sd / sqrt(n), 80 % power at 5 %; {about}; "
        f"total training time {total / 60:.1f} min.\n"
    )
    table, chart = out / TABLE, out / CHART
    atomic_write(table, lambda f: f.write(text.encode()))
    _chart(summarize(records), chart, about)
    return table, chart
