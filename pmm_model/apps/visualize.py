"""The pictures of a trained network: :func:`draw_checkpoint`.

It draws ``mixing.png``, ``ranked.png`` and ``curves.png`` for a checkpoint and its data set,
with the plots of :mod:`pmm_model.apps.plots`; the command line ``python -m
pmm_model.visualize`` (:mod:`pmm_model.cli.visualize`) is its front end::

    python -m pmm_model.visualize --checkpoint runs/pmm-synthetic/checkpoint.pt \\
        --data synthetic --out runs/pmm-synthetic/pictures
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from pmm_model.apps.panels import denormalize
from pmm_model.apps.plots import plot_mixing, plot_ranked_list, plot_training_curves, read_metrics
from pmm_model.data.datasets import Record, ReIDDataset
from pmm_model.data.images import ImageDataset, image_problem
from pmm_model.data.loaders import build_test_loaders
from pmm_model.data.transforms import build_transforms
from pmm_model.evaluation.evaluator import extract_features, pairwise_distance, rank_gallery
from pmm_model.nets.models import mixes_features, pmm_saliency

__all__ = ["draw_checkpoint"]


def _batch(records: Sequence[Record], transform) -> tuple[Tensor, Tensor]:
    """The images and identities of ``records``, as one batch through ``transform``."""
    dataset = ImageDataset(records, transform)
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([image for image, _, _ in items]), torch.tensor([p for _, p, _ in items])


def _training_batch(
    train: Sequence[Record], num_ids: int, images_per_id: int, seed: int
) -> list[Record]:
    """``images_per_id`` records of each of ``num_ids`` random identities, grouped by identity."""
    by_pid: dict[int, list[Record]] = {}
    for record in train:
        by_pid.setdefault(record.pid, []).append(record)
    rng = np.random.default_rng(seed)
    eligible = sorted(pid for pid, recs in by_pid.items() if len(recs) >= images_per_id)
    chosen = rng.choice(eligible, size=min(num_ids, len(eligible)), replace=False)
    return [rec for pid in chosen for rec in by_pid[int(pid)][:images_per_id]]


def draw_checkpoint(
    model: nn.Module,
    train_args: Mapping[str, Any],
    data: ReIDDataset,
    out: str | os.PathLike,
    *,
    device: torch.device | str = "cpu",
    metrics: str | os.PathLike | None = None,
    title: str = "",
    ids: int = 4,
    images_per_id: int = 2,
    queries: int = 6,
    topk: int = 10,
    seed: int = 0,
    skip_bad_images: bool = False,
) -> dict[str, Path]:
    """Draw the pictures of a trained network: ``mixing.png``, ``ranked.png``, ``curves.png``.

    - ``mixing.png`` (a network that mixes: PMM, or the baseline with its layer): a
      batch of ``images_per_id`` training images of each of ``ids`` random identities goes once
      through the training forward (:func:`~pmm_model.nets.models.pmm_saliency`), and
      :func:`plot_mixing` shows what each mix replaced, from whom, and the saliency that chose
      it.
    - ``ranked.png``: ``queries`` queries spread evenly over the query set and their ``topk``
      nearest gallery images (:func:`~pmm_model.evaluation.evaluator.rank_gallery`), by
      :func:`plot_ranked_list`.
    - ``curves.png``: :func:`plot_training_curves` of the ``metrics`` file, when it exists.

    Seeds torch's global generator with ``seed`` (the partners of the mixes come from it), as
    well as the choice of identities.

    Args:
        model: the network, as :func:`pmm_model.run.checkpoint.load_model` returns it.
        train_args: its training configuration (``height``, ``width``, ``block_size``,
            ``model``), the checkpoint's ``args``.
        data: the data set to draw images from.
        out: folder for the PNG files (created).
        device: where the network runs.
        metrics: the run's ``metrics.json`` (:func:`read_metrics`); None: no curves.
        title: the curves' title.
        ids: identities in the mixing picture.
        images_per_id: images per identity in the mixing picture.
        queries: queries in the ranked-list picture.
        topk: gallery images per query.
        seed: choice of images and partners.
        skip_bad_images: leave out images that cannot be decoded (named in a warning)
            instead of raising.

    Returns:
        The written pictures by name (``mixing``, ``ranked``, ``curves``), in that order.

    Raises:
        ValueError, OSError: before anything is drawn: a metrics file that is missing or
            not a run's, a mixing network whose class count does not fit ``data``,
            ``images_per_id`` more images than 2 identities have, an unreadable image (see
            :class:`~pmm_model.data.images.ImageDataset`).

    Example:
        >>> model, train_args = load_model("runs/pmm-synthetic/checkpoint.pt")  # doctest: +SKIP
        >>> data = build_dataset("synthetic")  # doctest: +SKIP
        >>> draw_checkpoint(model, train_args, data, "pictures")  # doctest: +SKIP
        {'mixing': PosixPath('pictures/mixing.png'), 'ranked': ..., 'curves': ...}
    """
    # Everything that can fail is checked before the first picture is drawn.
    height, width = train_args["height"], train_args["width"]
    curves = read_metrics(metrics) if metrics is not None else None
    mixing_batch = None
    if mixes_features(model):
        if data.num_train_pids != train_args["num_classes"]:
            raise ValueError(
                f"the network was trained on {train_args['num_classes']} identities, but "
                f"{data.name or 'the data'!r} has {data.num_train_pids}: the mixing picture "
                "needs the training data of the checkpoint"
            )
        train = data.train
        if skip_bad_images:
            train = [r for r in train if image_problem(r.img_path, decode=True) is None]
        mixing_batch = _training_batch(train, ids, images_per_id, seed)
        if len({r.pid for r in mixing_batch}) < 2:
            raise ValueError(
                f"images_per_id {images_per_id}: fewer than 2 training identities have "
                f"{images_per_id} images; "
                "the mixing picture mixes between identities, so ask for fewer per identity"
            )
    query_loader, gallery_loader = build_test_loaders(
        data, height, width, skip_bad_images=skip_bad_images
    )
    model.to(device)
    torch.manual_seed(seed)
    transform = build_transforms(height, width, is_train=False)
    out = Path(out)
    written: dict[str, Path] = {}

    if mixing_batch is not None:
        images, labels = _batch(mixing_batch, transform)
        saliencies, infos, block_sizes = pmm_saliency(model, images.to(device), labels.to(device))
        written["mixing"] = out / "mixing.png"
        plot_mixing(
            written["mixing"],
            denormalize(images),
            saliencies,
            infos,
            block_sizes[0],  # every mix of a network cuts its map alike
            labels=labels,
        )

    qf, q_pids, q_cams = extract_features(model, query_loader, device)
    gf, g_pids, g_cams = extract_features(model, gallery_loader, device)
    picked = np.linspace(0, len(qf) - 1, min(queries, len(qf))).round().astype(int)
    dist = pairwise_distance(qf[picked], gf)
    ranked = [
        rank_gallery(row, q_pids[q], q_cams[q], g_pids, g_cams, topk)
        for row, q in zip(dist, picked, strict=True)
    ]
    # The loaders' records: with skip_bad_images they are the images left, in feature order.
    query_records = cast(ImageDataset, query_loader.dataset).records
    gallery_records = cast(ImageDataset, gallery_loader.dataset).records
    query_images, _ = _batch([query_records[q] for q in picked], transform)
    gallery = torch.stack(
        [_batch([gallery_records[g] for g in order], transform)[0] for order, _ in ranked]
    )
    written["ranked"] = out / "ranked.png"
    plot_ranked_list(
        written["ranked"],
        denormalize(query_images),
        denormalize(gallery),
        [verdicts for _, verdicts in ranked],
        query_titles=[f"query id {q_pids[q]} c{q_cams[q] + 1}" for q in picked],
        ranked_titles=[
            [f"{r + 1}: id {g_pids[g]} c{g_cams[g] + 1}" for r, g in enumerate(order)]
            for order, _ in ranked
        ],
    )

    if curves is not None:
        written["curves"] = out / "curves.png"
        plot_training_curves(written["curves"], curves, title=title)
    return written
