"""Where a finished study's noise comes from: ``python -m pmm_model.cli.study_power``.

Re-evaluates every finished run of a grid (``pmm-study --out DIR``) query by query, checks the
result against the metrics the grid stored, splits the variance of each variant-minus-reference
difference into evaluation (a bootstrap over the test identities) and training, and predicts
what grids with more seeds or more test identities would detect
(:mod:`pmm_model.apps.study_power`).

Example:
    The occluded study's primary comparison::

        python -m pmm_model.cli.study_power --runs runs/study-occluded \\
            --out docs/results/study-occluded-power.md

Writes ``--out`` (markdown) and the same name with ``.json`` (per-query results and the
report's numbers); ``--per-query`` that ``.json`` instead of ``--runs`` rebuilds the report
from it alone, without the checkpoints. Exit status: 0 done, 1 the re-evaluation does not
reproduce the stored metrics (the report is still written), 2 bad arguments, no grid or no
such file.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from pmm_model.apps.study import VARIANTS, StudyError
from pmm_model.apps.study_power import rewrite_power_report, write_power_report
from pmm_model.cli.args import ctrl_c_exits, int_in_range, output_file
from pmm_model.cli.scripts import program_name
from pmm_model.data.occlusion import EVAL_PROTOCOLS

__all__ = ["build_parser", "main"]

PROG = program_name("study_power")
# Rank-1 and mAP are means of per-query values: a re-evaluation matches to rounding or not at all.
TOLERANCE = 1e-9


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Split the seed-to-seed variance of a study's paired differences into "
        "evaluation (bootstrap over test identities) and training, and predict the detectable "
        "difference of larger grids.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--runs", type=Path, help="the grid folder (pmm-study --out)")
    source.add_argument(
        "--per-query",
        type=Path,
        help="instead of --runs: the .json an earlier report wrote (its per-query results); "
        "rebuilds the report without the checkpoints",
    )
    parser.add_argument("--out", required=True, type=output_file, help="the markdown to write")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        help="with --runs: variants compared with the reference; the first one gets the "
        "prediction table (default: pmm-a_hard_mix)",
    )
    parser.add_argument("--reference", choices=VARIANTS, help="with --runs (default: pmm-none)")
    parser.add_argument(
        "--protocols",
        nargs="+",
        choices=EVAL_PROTOCOLS,
        help=f"with --runs: evaluation protocols (default: {' '.join(EVAL_PROTOCOLS)})",
    )
    parser.add_argument(
        "--resamples",
        type=int_in_range(2, 1_000_000),
        default=2000,
        help="bootstrap resamples (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int_in_range(0, 2**32 - 1), default=0, help="bootstrap seed (default: 0)"
    )
    return parser


@ctrl_c_exits(PROG)
def main(argv: Sequence[str] | None = None) -> float:
    """Run the CLI; returns the largest gap between a re-evaluated and a stored metric."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.per_query is not None:
        for flag in ("variants", "reference", "protocols"):
            if getattr(args, flag) is not None:
                parser.error(f"argument --{flag}: only with --runs (--per-query holds its own)")
    reference = args.reference or "pmm-none"
    variants = args.variants or ["pmm-a_hard_mix"]
    if all(v == reference for v in variants):
        parser.error(f"argument --variants: name one besides the reference {reference!r}")
    try:
        if args.per_query is not None:
            out, data, gap = rewrite_power_report(
                args.per_query, args.out, args.resamples, args.seed
            )
        else:
            out, data, gap = write_power_report(
                args.runs,
                args.out,
                variants,
                reference,
                args.protocols or EVAL_PROTOCOLS,
                args.resamples,
                args.seed,
            )
    except (StudyError, ValueError, OSError) as err:  # no grid, an untrained variant, no file
        parser.exit(2, f"{PROG}: error: {err}\n")
    print(f"wrote {out} and {data}; largest gap to the stored metrics {gap:.1e}")
    if gap > TOLERANCE:
        parser.exit(1, f"{PROG}: error: the re-evaluation does not reproduce the stored metrics\n")
    return gap


if __name__ == "__main__":
    main()
