"""The ablation study (`python -m pmm_model.study`): variants x seeds, a table and a chart.

Variants (:data:`VARIANTS`): ``baseline`` (the BoT-style baseline network), ``pmm-none`` (PMM's
three stages without mixing) and ``pmm-<mode>`` for each feature-mix mode of
:data:`pmm_kernels.MODES` (``pmm-a_hard_mix`` is the paper's PMM). Every variant x seed is one
:func:`pmm_model.run.engine.run_training` call with the same training options, in its own folder
``<out>/<variant>/seed<seed>/``; the seed goes into the configuration's ``seed``.

:func:`run_study` trains the grid and :func:`write_report` writes ``<out>/study.md`` (mean and
sample standard deviation over seeds of rank-1, mAP, mINP and the wall time per run) and
``<out>/study.png`` (the same as bars with error bars). The report is rebuilt from the files in
``<out>`` alone, so it can be redone at any time (``--report-only`` on the command line).

**Resuming a half-finished grid.** Run the same command again. A run whose ``result.json``
exists (written atomically after :func:`~pmm_model.run.engine.run_training` returned) is skipped;
a run whose folder holds a ``checkpoint.pt`` but no result (interrupted by a signal, a crash or a
failure) continues from that checkpoint with ``run_training(resume=...)``, exactly where it
stopped; a run with neither starts afresh. ``<out>/study.json`` records the training options of
the grid, the dataset and its root (resolved) included: a second call with different ones (other
than where and how fast it runs: device, workers, checkpointing) is refused, so one table never
mixes two settings or two datasets. More
variants or seeds may be added to a grid later.

**Failures.** A run that fails (divergence, failed evaluation, unreadable data, ...) is recorded
in its folder's ``attempt.json`` and the grid goes on with the next run; the table counts it and
the next call retries it. SIGINT/SIGTERM stop the grid after the current run checkpointed
(:class:`~pmm_model.run.engine.TrainingInterrupted` is re-raised), also when the signal arrives
during an evaluation.

On a GPU, the same grid with ``data="market1501"`` and the paper's setting (no preset, i.e.
:data:`pmm_model.run.config.DEFAULTS`, with ImageNet weights) is the PMM paper's Table 3 ablation::

    python -m pmm_model.study --data market1501 --root /data --preset paper \\
        --pretrained imagenet --seeds 3 --out runs/study-market1501

Example:
    >>> records = run_study("runs/study", seeds=3, options={"epochs": 5})  # doctest: +SKIP
    >>> write_report("runs/study")  # doctest: +SKIP
    (PosixPath('runs/study/study.md'), PosixPath('runs/study/study.png'))
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard, cast

import numpy as np

from pmm_model.apps.visualize import plot_bars
from pmm_model.nets.models import MIX_MODES
from pmm_model.run.atomic import atomic_write
from pmm_model.run.config import DEFAULTS, make_config, upgrade_saved_config
from pmm_model.run.engine import TrainingInterrupted, run_training
from pmm_model.run.folder import CHECKPOINT, METRIC_KEYS

__all__ = [
    "STUDY_OWN_OPTIONS",
    "VARIANTS",
    "RunRecord",
    "StudyError",
    "VariantSummary",
    "check_seeds",
    "check_variants",
    "collect_results",
    "run_dir",
    "run_one",
    "run_study",
    "summarize",
    "write_report",
]

# variant -> the configuration keys that make it. PMM with every mix of the model ("none"
# first, the ablation's reference), after the baseline network.
VARIANTS: dict[str, dict[str, str]] = {
    "baseline": {"model": "baseline"},
    **{
        f"pmm-{mix}": {"model": "pmm", "mix": mix}
        for mix in sorted(MIX_MODES, key=lambda mix: mix != "none")
    },
}
# Options the study sets per run; the caller may not.
STUDY_OWN_OPTIONS = ("model", "mix", "seed", "output_dir")
# Options that may differ between calls on one grid: where and how fast it runs, not what.
_PLACE_OPTIONS = (
    "device",
    "workers",
    "checkpoint_every",
    "compile",
    "channels_last",
    "skip_bad_images",
)
RESULT, ATTEMPT, STUDY = "result.json", "attempt.json", "study.json"
TABLE, CHART = "study.md", "study.png"
# Failures that concern one run; anything else (a bug, KeyboardInterrupt) stops the grid.
_RUN_FAILURES = (RuntimeError, ValueError, FileNotFoundError, OSError)


class StudyError(ValueError):
    """Bad study arguments (variants, seeds, options) or a grid folder of other settings."""


@dataclass(frozen=True)
class RunRecord:
    """The state of one variant x seed run in a grid folder.

    Attributes:
        variant, seed: which run.
        status: ``"done"`` (metrics recorded), ``"failed"``, ``"interrupted"`` or ``"missing"``
            (planned, never started or no trace).
        metrics: ``rank1``, ``mAP``, ``mINP`` (fractions) when done, else empty.
        wall_seconds: training time over all attempts the study saw (done runs).
        error: the failure's message (failed or interrupted runs).
    """

    variant: str
    seed: int
    status: str
    metrics: dict[str, float]
    wall_seconds: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class VariantSummary:
    """A variant's row of the table: statistics over its finished seeds.

    Attributes:
        variant: the variant's name.
        done: seeds whose run finished, in order.
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


def check_variants(variants: Iterable[str] | None) -> list[str]:
    """The variants to run, in :data:`VARIANTS` order (None: all of them).

    Raises:
        StudyError: an unknown name (the message lists the valid ones), or none given.
    """
    if variants is None:
        return list(VARIANTS)
    variants = list(variants)
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        raise StudyError(f"variants: unknown {unknown}; valid: {', '.join(VARIANTS)}")
    if not variants:
        raise StudyError("variants: none given; valid: " + ", ".join(VARIANTS))
    return [name for name in VARIANTS if name in variants]


def check_seeds(seeds: int | Sequence[int]) -> list[int]:
    """``seeds`` as a list: a count N means seeds ``0..N-1``; a sequence is used as given.

    Raises:
        StudyError: a count < 1, an empty list, a negative, repeated or non-integer seed.
    """

    def is_int(value: object) -> TypeGuard[int]:
        return isinstance(value, int | np.integer) and not isinstance(value, bool)

    if is_int(seeds):
        if seeds < 1:
            raise StudyError(f"seeds: the number of seeds must be >= 1, got {seeds}")
        return list(range(int(seeds)))
    given = list(cast(Sequence[int], seeds))
    if not given or not all(is_int(s) and s >= 0 for s in given) or len(set(given)) < len(given):
        raise StudyError(f"seeds: expected distinct integers >= 0, got {given}")
    return [int(s) for s in given]


def run_dir(out: str | Path, variant: str, seed: int) -> Path:
    """The folder of one run: ``<out>/<variant>/seed<seed>``."""
    return Path(out) / variant / f"seed{seed}"


def _write_json(path: Path, value: Any) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(value, indent=2, sort_keys=True).encode()))


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _run_options(options: dict[str, Any], variant: str, seed: int, folder: Path) -> dict[str, Any]:
    return {**options, **VARIANTS[variant], "seed": seed, "output_dir": str(folder)}


def run_one(
    out: str | Path,
    variant: str,
    seed: int,
    options: dict[str, Any] | None = None,
    preset: str | None = None,
) -> tuple[RunRecord, str]:
    """Train one run of the grid, or pick up its recorded result.

    Returns:
        ``(record, how)``: ``how`` is ``"skipped"`` (already done), ``"resumed"`` (continued
        from its checkpoint) or ``"trained"``; ``record.status`` is ``"done"``.

    Raises:
        Whatever :func:`~pmm_model.run.engine.run_training` raises; the failure (and the time it
        took) is first recorded in the run's ``attempt.json``.
    """
    folder = run_dir(out, variant, seed)
    if (folder / RESULT).is_file():
        return _record(out, variant, seed), "skipped"
    run_options = _run_options(dict(options or {}), variant, seed, folder)
    checkpoint = folder / CHECKPOINT
    attempt = _read_json(folder / ATTEMPT) if (folder / ATTEMPT).is_file() else {}
    earlier = float(attempt.get("wall_seconds", 0.0))
    how = "resumed" if checkpoint.is_file() else "trained"
    tic = time.perf_counter()
    try:
        if how == "resumed":
            metrics = run_training(run_options, resume=checkpoint)
        else:
            # The folder is the grid's own: files of a run killed before its first checkpoint
            # are replaced.
            metrics = run_training(run_options, preset, overwrite=True)
    except BaseException as err:
        status = (
            "interrupted" if isinstance(err, TrainingInterrupted | KeyboardInterrupt) else "failed"
        )
        folder.mkdir(parents=True, exist_ok=True)
        _write_json(
            folder / ATTEMPT,
            {
                "status": status,
                "error": f"{type(err).__name__}: {err}",
                "wall_seconds": earlier + time.perf_counter() - tic,
            },
        )
        raise
    _write_json(
        folder / RESULT,
        {
            "variant": variant,
            "seed": seed,
            "metrics": {key: float(metrics[key]) for key in METRIC_KEYS},
            "wall_seconds": earlier + float(metrics["wall_seconds"]),
            "resumed": how == "resumed" or bool(attempt),
        },
    )
    (folder / ATTEMPT).unlink(missing_ok=True)
    return _record(out, variant, seed), how


def _record(out: str | Path, variant: str, seed: int) -> RunRecord:
    folder = run_dir(out, variant, seed)
    if (folder / RESULT).is_file():
        result = _read_json(folder / RESULT)
        return RunRecord(
            variant,
            seed,
            "done",
            {k: float(result["metrics"][k]) for k in METRIC_KEYS},
            float(result["wall_seconds"]),
        )
    if (folder / ATTEMPT).is_file():
        attempt = _read_json(folder / ATTEMPT)
        return RunRecord(variant, seed, attempt["status"], {}, error=attempt["error"])
    return RunRecord(variant, seed, "missing", {})


def _settings(options: dict[str, Any], preset: str | None) -> dict[str, Any]:
    """What a grid's runs train with (its full configuration less the per-run and place keys).

    Raises:
        ConfigError: an option :func:`~pmm_model.run.config.make_config` rejects, for any variant.
    """
    configs = [make_config({**options, **VARIANTS[v], "output_dir": "-"}, preset) for v in VARIANTS]
    settings = {
        key: value
        for key, value in configs[0].to_dict().items()
        if key not in (*STUDY_OWN_OPTIONS, *_PLACE_OPTIONS)
    }
    if settings["root"] is not None:  # the same dataset, however the path is written
        settings["root"] = str(Path(settings["root"]).resolve())
    return settings


def _claim_grid(out: Path, settings: dict[str, Any], variants: list[str], seeds: list[int]) -> None:
    path = out / STUDY
    if path.is_file():
        saved = _read_json(path)
        before = upgrade_saved_config(saved["settings"])
        differ = sorted(key for key in {*before, *settings} if before.get(key) != settings.get(key))
        if differ:
            changes = ", ".join(
                f"{key}: {before.get(key)!r} -> {settings.get(key)!r}" for key in differ
            )
            raise StudyError(
                f"out: {str(out)!r} holds a grid trained with other settings "
                f"({changes}); use the same settings to continue it, or another "
                "folder"
            )
        variants = [v for v in VARIANTS if v in {*saved["variants"], *variants}]
        seeds = sorted({*saved["seeds"], *seeds})
    _write_json(path, {"settings": settings, "variants": variants, "seeds": seeds})


def run_study(
    out: str | Path,
    variants: Iterable[str] | None = None,
    seeds: int | Sequence[int] = 3,
    options: dict[str, Any] | None = None,
    preset: str | None = "demo",
    progress: Callable[[str], None] | None = None,
) -> list[RunRecord]:
    """Train every variant x seed not yet done in ``out`` (see the module docstring).

    Args:
        out: the grid's folder.
        variants: names of :data:`VARIANTS` (None: all).
        seeds: a count N (seeds ``0..N-1``) or the seeds.
        options: training options (:data:`pmm_model.run.config.DEFAULTS` keys) for every run, over
            ``preset``; not the per-run :data:`STUDY_OWN_OPTIONS`.
        preset: a key of :data:`pmm_model.run.config.PRESETS`, or None for the defaults (the
            paper's setting).
        progress: called with one line per run as it starts and ends (e.g. ``print``).

    Returns:
        One :class:`RunRecord` per requested run, in grid order (variant-major).

    Raises:
        StudyError: bad variants, seeds or options, or ``out`` holds a grid of other settings.
        ConfigError: a training option the runs cannot use (before anything trains).
        TrainingInterrupted, KeyboardInterrupt: a signal stopped the grid (the run is
            checkpointed; call again to continue).
    """
    variants, seeds = check_variants(variants), check_seeds(seeds)
    options = {k: v for k, v in dict(options or {}).items() if v is not None}
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise StudyError(f"options: unknown {unknown}; valid: {sorted(DEFAULTS)}")
    own = sorted(set(options) & set(STUDY_OWN_OPTIONS))
    if own:
        raise StudyError(f"options: {own} are set per run by the study; leave them out")
    out = Path(out)
    _claim_grid(out, _settings(options, preset), variants, seeds)
    say = progress or (lambda line: None)
    grid = [(variant, seed) for variant in variants for seed in seeds]
    records = []
    for index, (variant, seed) in enumerate(grid, start=1):
        name = f"[{index}/{len(grid)}] {variant} seed {seed}"
        try:
            record, how = run_one(out, variant, seed, options, preset)
        except _RUN_FAILURES as err:
            if isinstance(err, TrainingInterrupted):
                raise
            record = _record(out, variant, seed)
            say(f"{name}: FAILED ({type(err).__name__}: {err}); going on")
        else:
            m = record.metrics
            say(
                f"{name}: {how}: rank-1 {100 * m['rank1']:.1f}%  mAP {100 * m['mAP']:.1f}%  "
                f"mINP {100 * m['mINP']:.1f}%  ({record.wall_seconds:.0f} s)"
            )
        records.append(record)
    return records


def collect_results(out: str | Path) -> list[RunRecord]:
    """The records of the grid planned in ``out`` (its ``study.json``), in grid order.

    Raises:
        StudyError: ``out`` holds no grid.
    """
    path = Path(out) / STUDY
    if not path.is_file():
        raise StudyError(f"out: no grid in {str(out)!r} (no {STUDY}); run the study first")
    plan = _read_json(path)
    return [_record(out, variant, seed) for variant in plan["variants"] for seed in plan["seeds"]]


def summarize(records: Iterable[RunRecord]) -> list[VariantSummary]:
    """One :class:`VariantSummary` per variant of ``records`` (in :data:`VARIANTS` order)."""
    records = list(records)
    rows = []
    for variant in VARIANTS:
        mine = [r for r in records if r.variant == variant]
        if not mine:
            continue
        done = [r for r in mine if r.status == "done"]
        mean, std = {}, {}
        for key in (*METRIC_KEYS, "wall_seconds"):
            values = np.array(
                [r.wall_seconds if key == "wall_seconds" else r.metrics[key] for r in done],
                dtype=np.float64,
            )
            mean[key] = float(values.mean()) if len(values) else math.nan
            std[key] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        rows.append(
            VariantSummary(
                variant,
                tuple(r.seed for r in done),
                tuple(r.seed for r in mine if r.status in ("failed", "interrupted")),
                tuple(r.seed for r in mine if r.status == "missing"),
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

    Returns:
        The paths of the table and the chart.

    Raises:
        StudyError: ``out`` holds no grid.
    """
    out = Path(out)
    records = collect_results(out)
    rows = summarize(records)
    settings = _read_json(out / STUDY)["settings"]
    seeds = sorted({r.seed for r in records})
    total = sum(r.wall_seconds or 0.0 for r in records if r.status == "done")
    about = (
        f"{settings['data']}, {settings['backbone']} at {settings['height']}x"
        f"{settings['width']}, {settings['epochs']} epochs, seeds {seeds}"
    )
    text = (
        f"{markdown_table(rows)}\n"
        f"Mean ± sample standard deviation over the finished seeds; {about}; "
        f"total training time {total / 60:.1f} min.\n"
    )
    table, chart = out / TABLE, out / CHART
    atomic_write(table, lambda f: f.write(text.encode()))
    _chart(rows, chart, about)
    return table, chart
