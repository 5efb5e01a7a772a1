"""The ablation study (`python -m pmm_model.study`): variants x seeds, a table and a chart.

Variants (:data:`VARIANTS`): ``baseline`` (the BoT-style baseline network), ``baseline-<mode>``
(the baseline with the drop-in layer in that mode after the backbone module the ``mix_after``
option names; only with that option, and the only variants a timm backbone allows besides
``baseline``), ``pmm-none`` (PMM's three stages without mixing) and ``pmm-<mode>`` for each
feature-mix mode of :data:`pmm_kernels.MODES` (``pmm-a_hard_mix`` is the paper's PMM). Every
variant x seed is one :func:`pmm_model.run.engine.run_training` call with the same training
options, in its own folder ``<out>/<variant>/seed<seed>/``; the seed goes into the
configuration's ``seed``.

:func:`run_study` trains the grid; with ``protocols=("standard", "occluded")`` it also
evaluates each finished run's checkpoint on the occluded queries (docs/datasets.md#occluded-queries)
into ``<run>/occluded.json``. :func:`pmm_model.apps.study_report.write_report` writes
``<out>/study.md`` (mean and sample standard deviation over seeds of rank-1, mAP, mINP and the
wall time per run, per protocol, and the paired differences of each variant against ``baseline``
and ``pmm-none`` with 95 % intervals) and ``<out>/study.png``. The report is rebuilt from the
files in ``<out>`` alone, so it can be redone at any time (``--report-only`` on the command
line).

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
    >>> from pmm_model.apps.study_report import write_report
    >>> write_report("runs/study")  # doctest: +SKIP
    (PosixPath('runs/study/study.md'), PosixPath('runs/study/study.png'))
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard, cast

import numpy as np
import torch

import pmm_kernels
from pmm_model.data.datasets import build_dataset
from pmm_model.data.loaders import build_test_loaders
from pmm_model.data.occlusion import EVAL_PROTOCOLS, with_protocol
from pmm_model.evaluation.evaluator import evaluate
from pmm_model.evaluation.metrics import METRIC_KEYS
from pmm_model.nets.backbones import is_timm_backbone
from pmm_model.nets.models import MIX_MODES
from pmm_model.run.atomic import atomic_write
from pmm_model.run.checkpoint import load_model
from pmm_model.run.config import DEFAULTS, make_config, upgrade_saved_config
from pmm_model.run.engine import TrainingInterrupted, run_training
from pmm_model.run.folder import CHECKPOINT
from pmm_model.run.limits import SEED_MAX

__all__ = [
    "MAX_SEED_COUNT",
    "STUDY",
    "STUDY_OWN_OPTIONS",
    "VARIANTS",
    "RunRecord",
    "StudyError",
    "check_protocols",
    "check_seeds",
    "check_variants",
    "collect_results",
    "evaluate_checkpoint",
    "run_dir",
    "run_one",
    "run_study",
]

# variant -> the configuration keys that make it: the baseline network, alone and with the
# drop-in layer in each mode (after the module the grid's mix_after names), then PMM with every
# mix of the model ("none" first, the ablation's reference). mix_after None: not mixed there.
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {"model": "baseline", "mix_after": None},
    **{f"baseline-{mode}": {"model": "baseline", "mix": mode} for mode in pmm_kernels.MODES},
    **{
        f"pmm-{mix}": {"model": "pmm", "mix": mix, "mix_after": None}
        for mix in sorted(MIX_MODES, key=lambda mix: mix != "none")
    },
}
# The most seeds a count may ask for: each is a run of every variant.
MAX_SEED_COUNT = 1000
# Options the study sets per run; the caller may not.
STUDY_OWN_OPTIONS = ("model", "mix", "seed", "output_dir")
# Options that may differ between calls on one grid: where and how fast it runs, not what.
_PLACE_OPTIONS = (
    "device",
    "workers",
    "checkpoint_every",
    "checkpoint_every_steps",
    "checkpoint_every_minutes",
    "compile",
    "channels_last",
    "skip_bad_images",
    "tensorboard",
)
RESULT, ATTEMPT, STUDY = "result.json", "attempt.json", "study.json"
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
        metrics: ``rank1``, ``mAP``, ``mINP`` (fractions) when done, else empty: the standard
            protocol, the training's own last evaluation.
        wall_seconds: training time over all attempts the study saw (done runs).
        error: the failure's message (failed or interrupted runs).
        protocol_metrics: the same metrics under the other protocols evaluated so far
            (``{"occluded": {...}}``).
    """

    variant: str
    seed: int
    status: str
    metrics: dict[str, float]
    wall_seconds: float | None = None
    error: str | None = None
    protocol_metrics: dict[str, dict[str, float]] = field(default_factory=dict)

    def metrics_for(self, protocol: str) -> dict[str, float]:
        """The run's metrics under ``protocol`` (empty when not evaluated)."""
        return self.metrics if protocol == "standard" else self.protocol_metrics.get(protocol, {})


def _unfit(variant: str, options: dict[str, Any]) -> str | None:
    """Why the grid's ``options`` cannot train ``variant``, or None."""
    if variant.startswith("baseline-") and options.get("mix_after") is None:
        return "mixes after the backbone module that mix_after (--mix-after) names; give it"
    if variant.startswith("pmm-") and is_timm_backbone(str(options.get("backbone", ""))):
        return "is built on a torchvision ResNet; a timm backbone trains the baseline variants"
    return None


def check_variants(
    variants: Iterable[str] | None, options: dict[str, Any] | None = None
) -> list[str]:
    """The variants to run, in :data:`VARIANTS` order (None: all that ``options`` can train:
    ``baseline-<mode>`` only with ``mix_after``, ``pmm-*`` only on a torchvision backbone).

    Raises:
        StudyError: an unknown name (the message lists the valid ones), none given, a
            variant the options cannot train (the message says what it needs), or
            ``mix_after`` with no ``baseline-<mode>`` variant to use it.
    """
    options = options or {}
    if variants is None:
        return [name for name in VARIANTS if _unfit(name, options) is None]
    variants = list(variants)
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        raise StudyError(f"variants: unknown {unknown}; valid: {', '.join(VARIANTS)}")
    if not variants:
        raise StudyError("variants: none given; valid: " + ", ".join(VARIANTS))
    for name in variants:
        if (why := _unfit(name, options)) is not None:
            raise StudyError(f"variants: {name} {why}")
    if options.get("mix_after") is not None and not any(
        v.startswith("baseline-") for v in variants
    ):
        raise StudyError(
            "variants: mix_after (--mix-after) places the layer of the baseline-<mode> variants, "
            f"and none of {variants} is one; drop it or add such a variant"
        )
    return [name for name in VARIANTS if name in variants]


def check_seeds(seeds: int | Sequence[int]) -> list[int]:
    """``seeds`` as a list: a count N means seeds ``0..N-1``; a sequence is used as given.

    Raises:
        StudyError: a count outside [1, MAX_SEED_COUNT], an empty list, a repeated or
            non-integer seed, or one outside [0, SEED_MAX] (``pmm_model.run.limits``).
    """

    def is_int(value: object) -> TypeGuard[int]:
        return isinstance(value, int | np.integer) and not isinstance(value, bool)

    if is_int(seeds):
        if not 1 <= seeds <= MAX_SEED_COUNT:
            bound = ">= 1" if seeds < 1 else f"<= {MAX_SEED_COUNT}"
            raise StudyError(f"seeds: the number of seeds must be {bound}, got {seeds}")
        return list(range(int(seeds)))
    given = list(cast(Sequence[int], seeds))
    if (
        not given
        or not all(is_int(s) and 0 <= s <= SEED_MAX for s in given)
        or len(set(given)) < len(given)
    ):
        raise StudyError(f"seeds: expected distinct integers in [0, {SEED_MAX}], got {given}")
    return [int(s) for s in given]


def check_protocols(protocols: Iterable[str]) -> list[str]:
    """The evaluation protocols, ``standard`` (the training's own evaluation) always first.

    Raises:
        StudyError: an unknown protocol (the message lists the valid ones).
    """
    protocols = list(protocols)
    unknown = [p for p in protocols if p not in EVAL_PROTOCOLS]
    if unknown:
        raise StudyError(f"protocols: unknown {unknown}; valid: {', '.join(EVAL_PROTOCOLS)}")
    return [p for p in EVAL_PROTOCOLS if p == "standard" or p in protocols]


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


def evaluate_checkpoint(checkpoint: str | Path, protocol: str) -> dict[str, float]:
    """Rank-1, mAP and mINP of a run's final checkpoint under ``protocol``, on the CPU.

    The data set, its root and the input size come from the checkpoint's args; the evaluation
    is the training's own (no flip, no re-ranking), so ``"standard"`` gives the run's last
    recorded metrics again.
    """
    model, config = load_model(checkpoint)
    data = with_protocol(build_dataset(config.data, config.root), protocol)
    query_loader, gallery_loader = build_test_loaders(data, config.height, config.width)
    with torch.random.fork_rng(devices=[]):
        result = evaluate(model, query_loader, gallery_loader, "cpu")
    return result.metrics()


def _evaluate_protocols(out: str | Path, variant: str, seed: int, protocols: list[str]) -> None:
    """Write ``<run>/<protocol>.json`` for each protocol past ``standard`` not yet evaluated."""
    folder = run_dir(out, variant, seed)
    for protocol in protocols:
        path = folder / f"{protocol}.json"
        if protocol != "standard" and not path.is_file():
            _write_json(path, evaluate_checkpoint(folder / CHECKPOINT, protocol))


def _record(out: str | Path, variant: str, seed: int) -> RunRecord:
    folder = run_dir(out, variant, seed)
    if (folder / RESULT).is_file():
        result = _read_json(folder / RESULT)
        protocol_metrics = {
            protocol: {k: float(v) for k, v in _read_json(folder / f"{protocol}.json").items()}
            for protocol in EVAL_PROTOCOLS
            if protocol != "standard" and (folder / f"{protocol}.json").is_file()
        }
        return RunRecord(
            variant,
            seed,
            "done",
            {k: float(result["metrics"][k]) for k in METRIC_KEYS},
            float(result["wall_seconds"]),
            protocol_metrics=protocol_metrics,
        )
    if (folder / ATTEMPT).is_file():
        attempt = _read_json(folder / ATTEMPT)
        return RunRecord(variant, seed, attempt["status"], {}, error=attempt["error"])
    return RunRecord(variant, seed, "missing", {})


def _settings(options: dict[str, Any], preset: str | None, variants: list[str]) -> dict[str, Any]:
    """What a grid's runs train with (its full configuration less the per-run and place keys).

    Raises:
        ConfigError: an option :func:`~pmm_model.run.config.make_config` rejects, for any of
            ``variants``.
    """
    configs = [make_config({**options, **VARIANTS[v], "output_dir": "-"}, preset) for v in variants]
    settings = {
        key: value
        for key, value in configs[0].to_dict().items()
        if key not in (*STUDY_OWN_OPTIONS, *_PLACE_OPTIONS)
    }
    settings["mix_after"] = options.get("mix_after")  # the grid's, whatever the first variant
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
    protocols: Iterable[str] = ("standard",),
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
        protocols: the evaluation protocols (:data:`~pmm_model.data.occlusion.EVAL_PROTOCOLS`);
            each finished run's checkpoint is evaluated under those past ``standard`` once,
            runs finished by an earlier call included.

    Returns:
        One :class:`RunRecord` per requested run, in grid order (variant-major).

    Raises:
        StudyError: bad variants, seeds or options, or ``out`` holds a grid of other settings.
        ConfigError: a training option the runs cannot use (before anything trains).
        TrainingInterrupted, KeyboardInterrupt: a signal stopped the grid (the run is
            checkpointed; call again to continue).
    """
    options = {k: v for k, v in dict(options or {}).items() if v is not None}
    variants, seeds = check_variants(variants, options), check_seeds(seeds)
    protocols = check_protocols(protocols)
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise StudyError(f"options: unknown {unknown}; valid: {sorted(DEFAULTS)}")
    own = sorted(set(options) & set(STUDY_OWN_OPTIONS))
    if own:
        raise StudyError(f"options: {own} are set per run by the study; leave them out")
    out = Path(out)
    _claim_grid(out, _settings(options, preset, variants), variants, seeds)
    say = progress or (lambda line: None)
    grid = [(variant, seed) for variant in variants for seed in seeds]
    records = []
    for index, (variant, seed) in enumerate(grid, start=1):
        name = f"[{index}/{len(grid)}] {variant} seed {seed}"
        try:
            record, how = run_one(out, variant, seed, options, preset)
            if len(protocols) > 1:
                _evaluate_protocols(out, variant, seed, protocols)
                record = _record(out, variant, seed)
        except _RUN_FAILURES as err:
            if isinstance(err, TrainingInterrupted):
                raise
            record = _record(out, variant, seed)
            say(f"{name}: FAILED ({type(err).__name__}: {err}); going on")
        else:
            scores = "; ".join(
                f"{protocol}: rank-1 {100 * m['rank1']:.1f}%  mAP {100 * m['mAP']:.1f}%  "
                f"mINP {100 * m['mINP']:.1f}%"
                for protocol in protocols
                if (m := record.metrics_for(protocol))
            )
            say(f"{name}: {how}: {scores}  ({record.wall_seconds:.0f} s)")
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
