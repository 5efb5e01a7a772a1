"""Draw the pictures of a trained checkpoint: ``python -m pmm_model.visualize``.

Example:
    python -m pmm_model.visualize --checkpoint runs/pmm-synthetic/checkpoint.pt \\
        --data synthetic --out runs/pmm-synthetic

Writes ``mixing.png`` (PMM only: what each mix replaced, from whom, and the saliency that chose
it), ``ranked.png`` (queries and their top gallery matches) and ``curves.png`` (from the
``metrics.json`` beside the checkpoint), and prints their paths. The plotting itself lives in
:mod:`pmm_model.visualize`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pmm_model.checkpoint import load_model
from pmm_model.cli.args import int_at_least
from pmm_model.data.datasets import ImageDataset, build_dataset, dataset_names
from pmm_model.data.loaders import build_test_loaders
from pmm_model.data.transforms import build_transforms
from pmm_model.evaluation import extract_features, pairwise_distance
from pmm_model.models import PMMNet
from pmm_model.runtime import resolve_device
from pmm_model.visualize import (
    denormalize,
    plot_mixing,
    plot_ranked_list,
    plot_training_curves,
    pmm_saliency,
    rank_gallery,
)

__all__ = ["build_parser", "main"]


def _batch(records, transform) -> tuple[Tensor, Tensor]:
    dataset = ImageDataset(records, transform)
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([image for image, _, _ in items]), torch.tensor([p for _, p, _ in items])


def _training_batch(train, num_ids: int, per_id: int, seed: int):
    """``per_id`` records of each of ``num_ids`` random identities, grouped by identity."""
    by_pid: dict[int, list] = {}
    for record in train:
        by_pid.setdefault(record.pid, []).append(record)
    rng = np.random.default_rng(seed)
    eligible = sorted(pid for pid, recs in by_pid.items() if len(recs) >= per_id)
    chosen = rng.choice(eligible, size=min(num_ids, len(eligible)), replace=False)
    return [rec for pid in chosen for rec in by_pid[int(pid)][:per_id]]


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
    parser.add_argument("--out", required=True, help="folder for the PNG files")
    parser.add_argument(
        "--metrics", help="metrics.json to plot (default: the one beside the checkpoint)"
    )
    parser.add_argument(
        "--ids",
        type=int_at_least(2),
        default=4,
        help="identities in the mixing picture (default: %(default)s)",
    )
    parser.add_argument(
        "--per-id",
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


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """Run the CLI; returns the written pictures by name (``mixing``, ``ranked``, ``curves``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
        model, train_args = load_model(args.checkpoint)
        data = build_dataset(args.data, args.root)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    model.to(device)
    torch.manual_seed(args.seed)
    transform = build_transforms(train_args["height"], train_args["width"], is_train=False)
    out = Path(args.out)
    written: dict[str, Path] = {}

    if isinstance(model, PMMNet):
        images, labels = _batch(
            _training_batch(data.train, args.ids, args.per_id, args.seed), transform
        )
        saliencies, infos = pmm_saliency(model, images.to(device), labels.to(device))
        written["mixing"] = out / "mixing.png"
        plot_mixing(
            written["mixing"],
            denormalize(images),
            saliencies,
            infos,
            tuple(train_args["block_size"]),
            labels=labels,
        )
    else:
        print(f"mixing: skipped, a {train_args['model']!r} model does not mix features")

    query_loader, gallery_loader = build_test_loaders(
        data, train_args["height"], train_args["width"]
    )
    qf, q_pids, q_cams = extract_features(model, query_loader, device)
    gf, g_pids, g_cams = extract_features(model, gallery_loader, device)
    picked = np.linspace(0, len(qf) - 1, min(args.queries, len(qf))).round().astype(int)
    dist = pairwise_distance(qf[picked], gf)
    ranked = [
        rank_gallery(row, q_pids[q], q_cams[q], g_pids, g_cams, args.topk)
        for row, q in zip(dist, picked, strict=True)
    ]
    queries, _ = _batch([data.query[q] for q in picked], transform)
    gallery = torch.stack(
        [_batch([data.gallery[g] for g in order], transform)[0] for order, _ in ranked]
    )
    written["ranked"] = out / "ranked.png"
    plot_ranked_list(
        written["ranked"],
        denormalize(queries),
        denormalize(gallery),
        [verdicts for _, verdicts in ranked],
        query_titles=[f"query id {q_pids[q]} c{q_cams[q] + 1}" for q in picked],
        ranked_titles=[
            [f"{r + 1}: id {g_pids[g]} c{g_cams[g] + 1}" for r, g in enumerate(order)]
            for order, _ in ranked
        ],
    )

    metrics_path = Path(args.metrics or Path(args.checkpoint).parent / "metrics.json")
    if metrics_path.is_file():
        written["curves"] = out / "curves.png"
        plot_training_curves(
            written["curves"],
            json.loads(metrics_path.read_text()),
            title=f"{train_args['model']} on {args.data}",
        )
    for name, path in written.items():
        print(f"{name}: {path}")
    return written


if __name__ == "__main__":
    main()
