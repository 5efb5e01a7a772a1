"""Draw the pictures of a trained checkpoint: ``python -m pmm_model.visualize``.

Example:
    python -m pmm_model.visualize --checkpoint runs/pmm-synthetic/checkpoint.pt \\
        --data synthetic --out runs/pmm-synthetic

Writes ``mixing.png`` (PMM only: what each mix replaced, from whom, and the saliency that chose
it), ``ranked.png`` (queries and their top gallery matches) and ``curves.png`` (from the
``metrics.json`` beside the checkpoint), and prints their paths. The drawing itself is
:func:`pmm_model.apps.visualize.draw_checkpoint`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from pmm_model.apps.visualize import draw_checkpoint
from pmm_model.cli.args import ctrl_c_exits, existing_file, int_at_least, output_folder
from pmm_model.data.datasets import build_dataset, dataset_names
from pmm_model.run.checkpoint import load_model
from pmm_model.run.runtime import resolve_device

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``python -m pmm_model.visualize``."""
    parser = argparse.ArgumentParser(
        prog="python -m pmm_model.visualize",
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
        type=int_at_least(2),
        default=4,
        help="identities in the mixing picture (default: %(default)s)",
    )
    parser.add_argument(
        "--per-id",
        dest="images_per_id",
        type=int_at_least(1),
        default=2,
        help="images per identity in the mixing picture (default: %(default)s)",
    )
    parser.add_argument(
        "--queries",
        type=int_at_least(1),
        default=6,
        help="queries in the ranked-list picture (default: %(default)s)",
    )
    parser.add_argument(
        "--topk",
        type=int_at_least(1),
        default=10,
        help="gallery images per query (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int_at_least(0),
        default=0,
        help="choice of images and partners (default: %(default)s)",
    )
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    return parser


@ctrl_c_exits("python -m pmm_model.visualize")
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
        # draw_checkpoint checks the rest (metrics, data, per-id, images) before drawing.
        written = draw_checkpoint(
            model,
            config.to_dict(),
            data,
            args.out,
            device=device,
            metrics=metrics,
            title=f"{config.model} on {args.data}",
            ids=args.ids,
            images_per_id=args.images_per_id,
            queries=args.queries,
            topk=args.topk,
            seed=args.seed,
            skip_bad_images=args.skip_bad_images,
        )
    except (OSError, ValueError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    if metrics is None:
        print(f"curves: skipped, no --metrics and no {beside}")
    if "mixing" not in written:
        print(f"mixing: skipped, a {config.model!r} model does not mix features")
    for name, path in written.items():
        print(f"{name}: {path}")
    return written


if __name__ == "__main__":
    main()
