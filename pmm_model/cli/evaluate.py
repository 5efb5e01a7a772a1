"""Evaluate a trained checkpoint on a re-identification dataset.

Example:
    python -m pmm_model.evaluate --checkpoint runs/pmm-market1501/checkpoint.pt \\
        --data market1501 --root /data --flip --output results.json

Prints rank-1/5/10, mAP and mINP in percent; ``--output`` writes them (as fractions in
[0, 1], with the whole CMC curve) to a JSON file. ``--eval-protocol occluded`` evaluates on the
occluded copies of the queries (docs/datasets.md#occluded-queries), the gallery unchanged.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torch import nn

from pmm_model.cli.args import bounded, ctrl_c_exits, output_file
from pmm_model.cli.scripts import program_name
from pmm_model.data.datasets import build_dataset, dataset_names
from pmm_model.data.loaders import build_test_loaders
from pmm_model.data.occlusion import EVAL_PROTOCOLS, with_protocol
from pmm_model.evaluation.evaluator import evaluate
from pmm_model.evaluation.metrics import RankResult
from pmm_model.run.atomic import atomic_write
from pmm_model.run.runtime import resolve_device

if TYPE_CHECKING:
    from pmm_model.run.config import TrainConfig

__all__ = ["build_parser", "format_table", "load_model_for_eval", "main"]

REPORTED_RANKS = (1, 5, 10)


def load_model_for_eval(path: str) -> tuple[nn.Module, TrainConfig]:
    """The model and training configuration of a checkpoint.

    The one place the CLI touches the checkpoint format, so tests can replace it.
    """
    from pmm_model.run.checkpoint import load_model

    return load_model(path, map_location="cpu")


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    parser = argparse.ArgumentParser(
        prog=program_name("evaluate"),
        description="Evaluate a checkpoint: CMC rank-1/5/10, mAP and mINP (Market-1501 "
        "protocol, Euclidean distance on the model's test feature).",
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint.pt written by training")
    parser.add_argument("--data", required=True, choices=dataset_names(), help="dataset name")
    parser.add_argument("--root", help="dataset root (optional for synthetic: its cache folder)")
    parser.add_argument(
        "--eval-protocol",
        choices=EVAL_PROTOCOLS,
        default="standard",
        help="standard: the dataset's queries; occluded: each query with one body region "
        "hidden, the gallery unchanged (default: %(default)s)",
    )
    parser.add_argument(
        "--flip",
        action="store_true",
        help="average features with those of horizontally flipped images",
    )
    parser.add_argument(
        "--rerank", action="store_true", help="k-reciprocal re-ranking (needs (Q+G)^2 memory)"
    )
    parser.add_argument(
        "--batch-size",
        type=bounded("batch_size"),
        default=128,
        help="images per batch (default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=bounded("workers"),
        default=4,
        help="loader processes (default: %(default)s)",
    )
    parser.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="drop images that cannot be decoded (named and counted in a "
        "warning) instead of stopping at the first one",
    )
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--output",
        type=output_file,
        help="write the metrics (fractions in [0, 1]) and CMC curve to this JSON (checked "
        "for writing before the evaluation)",
    )
    return parser


def format_table(result: RankResult) -> str:
    """Rank-1/5/10 (those within the CMC curve), mAP and mINP in percent, one per line."""
    rows = [(f"Rank-{k}", result.cmc[k - 1]) for k in REPORTED_RANKS if k <= len(result.cmc)]
    rows += [("mAP", result.mAP), ("mINP", result.mINP)]
    return "\n".join([f"{'metric':<8} {'%':>6}"] + [f"{n:<8} {100 * v:6.2f}" for n, v in rows])


@ctrl_c_exits(program_name("evaluate"))
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the CLI; returns the dict it writes to ``--output``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        parser.error(f"argument --device: {err}")
    try:
        data = with_protocol(build_dataset(args.data, args.root), args.eval_protocol)
        model, config = load_model_for_eval(args.checkpoint)
        query_loader, gallery_loader = build_test_loaders(
            data,
            config.height,
            config.width,
            args.batch_size,
            args.workers,
            args.skip_bad_images,
            pin_memory=device.type == "cuda",
        )
    except (OSError, ValueError) as err:  # bad data, checkpoint or image: before any work
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    try:
        result = evaluate(
            model.to(device),
            query_loader,
            gallery_loader,
            device,
            flip=args.flip,
            rerank=args.rerank,
        )
    except (OSError, ValueError) as err:  # an image corrupt past its header, ...
        parser.exit(1, f"{parser.prog}: error: evaluation failed: {err}\n")

    print(
        f"{data.name}: {len(data.query)} queries, {len(data.gallery)} gallery images"
        f" (flip: {'on' if args.flip else 'off'}, re-ranking: {'on' if args.rerank else 'off'})"
    )
    print(format_table(result))
    report = {
        "checkpoint": str(args.checkpoint),
        "data": args.data,
        "root": args.root,
        "eval_protocol": args.eval_protocol,
        "flip": args.flip,
        "rerank": args.rerank,
        "num_query": len(data.query),
        "num_gallery": len(data.gallery),
        **{f"rank{k}": float(result.cmc[k - 1]) for k in REPORTED_RANKS},
        **result.to_dict(),
    }
    if args.output is not None:
        text = (json.dumps(report, indent=1) + "\n").encode()
        try:
            atomic_write(args.output, lambda f: f.write(text))
        except OSError as err:
            parser.exit(1, f"{parser.prog}: error: {err.strerror or err}\n")
    return report


if __name__ == "__main__":
    main()
