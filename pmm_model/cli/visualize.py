"""Draw the pictures of a trained checkpoint: ``python -m pmm_model.visualize``.

Example:
    python -m pmm_model.visualize --checkpoint runs/pmm-synthetic/checkpoint.pt \\
        --data synthetic --out runs/pmm-synthetic

Writes ``mixing.png`` (a network that mixes, PMM or the baseline with its layer: what each mix
replaced, from whom, and the saliency that chose it), ``ranked.png`` (queries and their top
gallery matches) and ``curves.png`` (from the ``metrics.json`` beside the checkpoint), and prints
their paths. The drawing itself is
:func:`pmm_model.apps.visualize.draw_checkpoint`.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from pmm_model.apps.visualize import draw_checkpoint
from pmm_model.cli.args import (
    bounded,
    ctrl_c_exits,
    existing_file,
    int_in_range,
    output_folder,
)
from pmm_model.cli.scripts import program_name
from pmm_model.data.datasets import ReIDDataset, build_dataset, dataset_names
from pmm_model.nets.models import mixes_features
from pmm_model.run.checkpoint import load_model
from pmm_model.run.runtime import resolve_device

__all__ = ["build_parser", "main"]

# The most of each the pictures show: more would not be readable (nor fit in memory).
MAX_IDS, MAX_PER_ID, MAX_QUERIES, MAX_TOPK = 64, 32, 100, 100


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``python -m pmm_model.visualize``."""
    parser = argparse.ArgumentParser(
        prog=program_name("visualize"),
        description="Draw the mixing, ranked-list and training-curve pictures of a checkpoint.",
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint.pt of a training run")
    parser.add_argument(
        "--data",
        default="synthetic",
        choices=dataset_names(),
        help="dataset (default: %(default)s)",
    )
    parser.add_argument("--root", help="dataset root (synthetic: cache folder, optional)")
    parser.add_argument("--out", required=True, type=output_folder, help="folder for the PNG files")
    parser.add_argument(
        "--metrics",
        type=existing_file,
        help="metrics.json to plot (default: the one beside the checkpoint, if there is one)",
    )
    parser.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave out images that cannot be decoded (named in a warning) instead of "
        "stopping at the first one",
    )
    parser.add_argument(
        "--ids",
        type=int_in_range(2, MAX_IDS),
        help="identities in the mixing picture, of a network that mixes (default: 4, or as many "
        "as have --per-id images)",
    )
    parser.add_argument(
        "--per-id",
        dest="images_per_id",
        type=int_in_range(1, MAX_PER_ID),
        help="images per identity in the mixing picture, of a network that mixes (default: 2)",
    )
    parser.add_argument(
        "--queries",
        type=int_in_range(1, MAX_QUERIES),
        help="queries in the ranked-list picture (default: 6, or all if fewer)",
    )
    parser.add_argument(
        "--topk",
        type=int_in_range(1, MAX_TOPK),
        help="gallery images per query (default: 10, or the whole gallery if smaller)",
    )
    parser.add_argument(
        "--seed",
        type=bounded("seed"),
        default=0,
        help="choice of images and partners (default: %(default)s)",
    )
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    return parser


# Why a checkpoint's network draws no mixing picture.
_NO_MIX = (
    "this checkpoint's network does not mix features (a baseline trained without --mix-after, "
    "or PMM with --mix none)"
)


def _refuse_what_cannot_be_drawn(
    parser: argparse.ArgumentParser, args: argparse.Namespace, mixes: bool, data: ReIDDataset
) -> None:
    """Refuse a given ``--ids``, ``--per-id``, ``--queries`` or ``--topk`` the pictures could
    not honour (the defaults shrink to what there is instead)."""
    if not mixes:
        for flag, value in (("--ids", args.ids), ("--per-id", args.images_per_id)):
            if value is not None:
                parser.error(
                    f"argument {flag}: only for a network that mixes features; {_NO_MIX}, so "
                    "there is no mixing picture"
                )
    elif args.ids is not None:
        per_id = 2 if args.images_per_id is None else args.images_per_id
        have = sum(n >= per_id for n in Counter(r.pid for r in data.train).values())
        if args.ids > have:
            parser.error(
                f"argument --ids: {args.ids} identities asked for, but only {have} training "
                f"identities have {per_id} images"
            )
    for flag, value, split in (
        ("--queries", args.queries, "query"),
        ("--topk", args.topk, "gallery"),
    ):
        have = len(getattr(data, split))
        if value is not None and value > have:
            parser.error(
                f"argument {flag}: {value} asked for, but the {split} set has {have} images"
            )


@ctrl_c_exits(program_name("visualize"))
def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """Run the CLI; returns the written pictures by name (``mixing``, ``ranked``, ``curves``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        parser.error(f"argument --device: {err}")
    metrics = args.metrics
    beside = Path(args.checkpoint).parent / "metrics.json"
    if metrics is None and beside.is_file():
        metrics = beside
    try:
        model, config = load_model(args.checkpoint)
        data = build_dataset(args.data, args.root)
        _refuse_what_cannot_be_drawn(parser, args, mixes_features(model), data)
        # draw_checkpoint checks the rest (metrics, data, per-id, images) before drawing.
        written = draw_checkpoint(
            model,
            config.to_dict(),
            data,
            args.out,
            device=device,
            metrics=metrics,
            title=f"{config.model} on {args.data}",
            ids=4 if args.ids is None else args.ids,
            images_per_id=2 if args.images_per_id is None else args.images_per_id,
            queries=6 if args.queries is None else args.queries,
            topk=10 if args.topk is None else args.topk,
            seed=args.seed,
            skip_bad_images=args.skip_bad_images,
        )
    except (OSError, ValueError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    if metrics is None:
        print(f"curves: skipped, no --metrics and no {beside}")
    if "mixing" not in written:
        print(f"mixing: skipped, {_NO_MIX}")
    for name, path in written.items():
        print(f"{name}: {path}")
    return written


if __name__ == "__main__":
    main()
