"""The ablation study as one command: ``python -m pmm_model.study``.

Trains every variant (baseline, PMM without mixing, PMM with each feature-mix mode) with each
seed, one :func:`pmm_model.run.engine.run_training` run per folder ``<out>/<variant>/seed<seed>``,
then writes ``<out>/study.md`` (mean ± std over seeds of rank-1, mAP, mINP and wall time) and
``<out>/study.png``. Running the same command again resumes a half-finished grid: finished runs
are skipped, interrupted ones continue from their checkpoint (see :mod:`pmm_model.apps.study`).

Examples:
    The grid on the synthetic set, on the CPU::

        python -m pmm_model.study --seeds 3 --out runs/study

    On a GPU, the paper's Table 3 ablation (Market-1501, the paper's setting)::

        python -m pmm_model.study --data market1501 --root /data --preset paper \\
            --pretrained imagenet --seeds 3 --out runs/study-market1501

Exit status: 0 every run finished, 1 some run failed (the table marks it; rerun to retry),
2 bad arguments, 128 + signal number when SIGTERM/SIGINT stopped the grid (the current run is
checkpointed; rerun the same command to continue).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from pmm_model.apps.study import VARIANTS, RunRecord, StudyError, check_seeds, run_study
from pmm_model.apps.study_report import write_report
from pmm_model.cli.args import (
    amp_unused,
    backbone_name,
    bounded,
    ctrl_c_exits,
    finite_float,
    output_folder,
    pretrained_weights,
)
from pmm_model.cli.scripts import program_name
from pmm_model.cli.train import FlagWords
from pmm_model.data.datasets import dataset_names
from pmm_model.data.occlusion import EVAL_PROTOCOLS
from pmm_model.run.config import DEFAULTS, PRESETS, ConfigError
from pmm_model.run.engine import AMP_DTYPES, TrainingInterrupted
from pmm_model.run.runtime import resolve_device

__all__ = ["PAPER", "build_parser", "main"]

PROG = program_name("study")


class StudyWords(FlagWords):
    """The training errors in the study's terms: a stopped grid continues by rerunning it."""

    def resume_hint(self, checkpoint: Path | None) -> str:
        return "rerun the same command to continue the grid"


WORDS = StudyWords()
# --preset value for no preset: the configuration defaults, which are the paper's setting.
PAPER = "paper"

_EPILOG = f"""variants: {", ".join(VARIANTS)}

examples:
  python -m pmm_model.study --seeds 3 --out runs/study  # CPU, synthetic
  python -m pmm_model.study --report-only --out runs/study  # the table and chart again
  # on a GPU, the paper's Table 3 ablation:
  python -m pmm_model.study --data market1501 --root /data --preset paper --pretrained imagenet \\
      --seeds 3 --out runs/study-market1501

Run the same command again to resume a half-finished grid: finished runs are skipped,
interrupted ones continue from their checkpoint. Exit status: 0 all runs finished, 1 some
failed, 2 bad arguments, 128 + signal number when a signal stopped the grid.
"""


def _seeds(text: str) -> int | list[int]:
    """``N`` (seeds 0..N-1) or a comma-separated list (``0,4,7``; one seed: ``5,``)."""
    try:
        value = [int(s) for s in text.split(",") if s.strip()] if "," in text else int(text)
        check_seeds(value)
    except StudyError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("seeds: ")) from None
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a count N or a comma-separated list of seeds, got {text!r}"
        ) from None
    return value


def _variant(text: str) -> str:
    if text not in VARIANTS:
        raise argparse.ArgumentTypeError(f"unknown variant {text!r}; valid: {', '.join(VARIANTS)}")
    return text


def _default(key: str) -> str:
    return f"(default: the preset's, else {DEFAULTS[key]})"


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser; training options left out are not in the namespace."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train a grid of variants x seeds on one dataset and write a markdown table "
        "and a PNG chart of rank-1, mAP and mINP (mean ± std over seeds) and wall time. On a GPU, "
        "--data market1501 --root DIR --preset paper --pretrained imagenet is the PMM paper's "
        "Table 3 ablation.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,
    )
    grid = parser.add_argument_group("grid")
    grid.add_argument(
        "--out",
        type=output_folder,
        default="runs/study",
        help="the grid's folder, checked for writing first (default: runs/study)",
    )
    grid.add_argument(
        "--variants",
        nargs="+",
        type=_variant,
        metavar="VARIANT",
        help="a subset of the variants (default: all)",
    )
    grid.add_argument(
        "--seeds",
        type=_seeds,
        default=3,
        help="N (seeds 0..N-1) or a comma-separated list (default: 3)",
    )
    grid.add_argument(
        "--eval-protocols",
        nargs="+",
        choices=EVAL_PROTOCOLS,
        default=["standard"],
        metavar="PROTOCOL",
        help="evaluate every finished run under these protocols: standard (the training's own "
        "evaluation, always) and occluded (docs/datasets.md, 'Occluded queries') "
        "(default: standard)",
    )
    grid.add_argument(
        "--report-only",
        action="store_true",
        help="only rebuild the table and chart from the results in --out",
    )
    demo = " ".join(f"{key}={value}" for key, value in PRESETS["demo"].items())
    train = parser.add_argument_group("training (the same for every run)")
    train.add_argument(
        "--preset",
        choices=sorted({*PRESETS, PAPER}),
        default="demo",
        help=f"named defaults that the options below override; '{PAPER}': the "
        f"paper's setting (no preset). demo (the default): {demo}",
    )
    train.add_argument("--data", choices=dataset_names(), help=_default("data"))
    train.add_argument("--root", help="dataset root (synthetic: cache folder, optional)")
    train.add_argument("--epochs", type=bounded("epochs"), help=_default("epochs"))
    train.add_argument(
        "--eval-every",
        type=bounded("eval_every"),
        help="evaluate every N epochs and at the end " + _default("eval_every"),
    )
    train.add_argument("--lr", type=finite_float(0.0), help=_default("lr"))
    train.add_argument(
        "--backbone",
        type=backbone_name,
        help="torchvision ResNet or timm/<timm model name> (baseline variants only) "
        + _default("backbone"),
    )
    train.add_argument(
        "--mix-after",
        metavar="MODULE",
        help="the backbone module after which the baseline-<mode> variants mix (layer3, "
        "blocks.9, ...); without it those variants are not run",
    )
    train.add_argument(
        "--pretrained",
        type=pretrained_weights,
        help="'imagenet' or a state dict of the backbone",
    )
    train.add_argument("--height", type=bounded("height"), help=_default("height"))
    train.add_argument("--width", type=bounded("width"), help=_default("width"))
    train.add_argument(
        "--ids-per-batch",
        type=bounded("ids_per_batch"),
        metavar="P",
        help=_default("ids_per_batch"),
    )
    train.add_argument(
        "--images-per-id",
        type=bounded("images_per_id"),
        metavar="K",
        help=_default("images_per_id"),
    )
    train.add_argument("--amp", choices=AMP_DTYPES, help=_default("amp"))
    train.add_argument("--workers", type=bounded("workers"), help=_default("workers"))
    train.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    return parser


def _refuse_unused(parser: argparse.ArgumentParser, args: dict[str, Any]) -> None:
    """Refuse, before any run, what the grid would not use: any grid or training option
    with ``--report-only``, a device that is not CPU or CUDA, ``--amp`` off CUDA."""
    if args.get("report_only"):
        for action in parser._actions:
            given = action.dest in args and args[action.dest] != action.default
            if action.option_strings and action.dest not in ("out", "report_only") and given:
                parser.error(
                    f"argument {action.option_strings[0]}: unused with --report-only, "
                    "which only rebuilds the table and chart from --out"
                )
        return
    try:
        device = resolve_device(args.get("device"))
    except ValueError as err:
        parser.error(f"argument --device: {err}")
    unused = amp_unused(args.get("amp"), device.type)
    if "amp" in args and unused is not None:
        parser.error(f"argument --amp: {unused}")


def _fail(status: int, message: str) -> NoReturn:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    sys.exit(status)


@ctrl_c_exits(PROG)
def main(argv: Sequence[str] | None = None) -> list[RunRecord]:
    """Run the CLI; returns the records of the runs (see :func:`pmm_model.apps.study.run_study`).

    Errors end the program: status 2 for arguments, 1 when a run failed (after the report),
    128 + signal number when a signal stopped the grid.
    """
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    _refuse_unused(parser, args)
    out, report_only = args.pop("out"), args.pop("report_only", False)
    variants, seeds = args.pop("variants", None), args.pop("seeds")
    preset, protocols = args.pop("preset"), args.pop("eval_protocols")
    records: list[RunRecord] = []
    if not report_only:
        try:
            records = run_study(
                out,
                variants,
                seeds,
                args,
                None if preset == PAPER else preset,
                progress=lambda line: print(line, flush=True),
                protocols=protocols,
            )
        except ConfigError as err:
            named = err.option is not None
            parser.error(f"argument {WORDS.describe(err)}" if named else WORDS.describe(err))
        except StudyError as err:
            parser.error(str(err))
        except TrainingInterrupted as err:
            _fail(128 + err.signum, WORDS.describe(err))
        except KeyboardInterrupt:
            _fail(
                128 + 2,
                "interrupted by a second Ctrl-C; rerun the same command to continue "
                "(the current run restarts from its last checkpoint)",
            )
    try:
        table, chart = write_report(out)
    except StudyError as err:
        parser.error(str(err))
    print(table.read_text(), end="")
    print(f"table: {table}\nchart: {chart}")
    failed = [r for r in records if r.status != "done"]
    if failed:
        _fail(
            1,
            f"{len(failed)} of {len(records)} runs failed: "
            + ", ".join(f"{r.variant} seed {r.seed}" for r in failed)
            + "; rerun the same command to retry them",
        )
    return records


if __name__ == "__main__":
    main()
