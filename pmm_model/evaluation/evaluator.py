"""Feature extraction, distances and memory-bounded evaluation of a re-identification model.

Distances are plain (not squared) Euclidean by default. :func:`evaluate_features` ranks the
gallery for a block of queries at a time and keeps only per-query results, so its memory is
bounded by one block whatever the set sizes (a 100k x 100k evaluation never holds a dense
matrix); re-ranking is the exception (see :mod:`pmm_model.evaluation.reranking`).

Example:
    >>> result = evaluate(model, query_loader, gallery_loader, "cuda", flip=True)  # doctest: +SKIP
    >>> print(f"rank-1 {result.cmc[0]:.1%}  mAP {result.mAP:.1%}")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from pmm_model.evaluation.metrics import (
    ArrayLike,
    RankAccumulator,
    RankResult,
    evaluate_rank,
    rows_per_block,
)
from pmm_model.evaluation.reranking import re_ranking

__all__ = [
    "DISTANCES",
    "evaluate",
    "evaluate_features",
    "extract_features",
    "pairwise_distance",
    "rank_gallery",
]

# The distances between features that evaluation can rank by (the ``metric`` arguments).
DISTANCES = ("euclidean", "cosine")


def _forward(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    feats = model(images)
    if not isinstance(feats, torch.Tensor) or feats.ndim != 2 or len(feats) != len(images):
        got = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
        raise ValueError(
            f"extract_features: model(images) must return a (batch, dim) feature tensor in "
            f"eval mode, got {got} for a batch of {len(images)}"
        )
    return feats


def extract_features(
    model: nn.Module, loader: Iterable, device: torch.device | str, flip: bool = False
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Features of every image a loader yields, in loader order.

    The model runs in eval mode without gradients (its previous mode is restored afterwards).

    Args:
        model: Maps an image batch ``(B, 3, H, W)`` to features ``(B, D)``.
        loader: Yields ``(images, pids, camids)`` batches, e.g. a ``DataLoader`` over an
            :class:`~pmm_model.data.images.ImageDataset`.
        device: Where the model runs.
        flip: Average each feature with that of the horizontally flipped image.

    Returns:
        ``(features, pids, camids)``: a float32 ``(N, D)`` CPU tensor (kept off the
        accelerator so large sets fit) and two int64 ``(N,)`` arrays.

    Example:
        >>> feats, pids, camids = extract_features(model, loader, "cpu")  # doctest: +SKIP
    """
    device = torch.device(device)
    feats, pids, camids = [], [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for images, pid, camid in loader:
                images = images.to(device, non_blocking=True)
                f = _forward(model, images)
                if flip:
                    f = (f + _forward(model, images.flip(-1))) / 2
                feats.append(f.float().cpu())
                pids.append(np.asarray(pid, dtype=np.int64))
                camids.append(np.asarray(camid, dtype=np.int64))
    finally:
        model.train(was_training)
    if not feats:
        raise ValueError("extract_features: the loader yielded no batches")
    return torch.cat(feats), np.concatenate(pids), np.concatenate(camids)


def _check_features(query: torch.Tensor, gallery: torch.Tensor, metric: str) -> None:
    for name, x in (("query", query), ("gallery", gallery)):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != 2:
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise TypeError(f"{name} features must be a 2-D floating tensor, got {got}")
    if query.shape[1] != gallery.shape[1] or query.device != gallery.device:
        raise ValueError(
            f"query and gallery features must share dim and device, got {tuple(query.shape)} "
            f"on {query.device} and {tuple(gallery.shape)} on {gallery.device}"
        )
    if metric not in DISTANCES:
        raise ValueError(f"metric must be one of {DISTANCES}, got {metric!r}")


def _prepare_gallery(gallery: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Gallery in the compute dtype plus what every block reuses (squared norms)."""
    # Half-precision features are compared in float32: the norm expansion below cancels badly.
    g = gallery.double() if gallery.dtype == torch.float64 else gallery.float()
    if metric == "cosine":
        g = nn.functional.normalize(g, dim=1)
    # einsum: row norms without a gallery-sized temporary (g.square() would be one).
    return g, torch.einsum("ij,ij->i", g, g)


def _distance_block(
    query: torch.Tensor, g: torch.Tensor, g_sq: torch.Tensor, metric: str
) -> torch.Tensor:
    q = query.to(g.dtype)
    if metric == "cosine":
        return 1.0 - nn.functional.normalize(q, dim=1) @ g.T
    # |q - g|^2 = |q|^2 + |g|^2 - 2 q.g as one matmul; rounding can make it slightly negative.
    sq = torch.addmm(g_sq[None, :], q, g.T, alpha=-2.0).add_(q.square().sum(1, keepdim=True))
    return sq.clamp_min_(0.0).sqrt_()


def pairwise_distance(
    query: torch.Tensor,
    gallery: torch.Tensor,
    metric: str = "euclidean",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Dense ``(Q, G)`` distance matrix on the features' device.

    Args:
        query: ``(Q, D)`` features.
        gallery: ``(G, D)`` features, same device.
        metric: ``"euclidean"`` (plain, not squared) or ``"cosine"`` (1 - cosine similarity).
        chunk_size: Query rows computed at a time, bounding the temporaries; default: about
            4M matrix elements per block.

    Returns:
        float32 distances (float64 for float64 inputs).

    Example:
        >>> pairwise_distance(torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0]]))
        tensor([[5.]])
    """
    _check_features(query, gallery, metric)
    g, g_sq = _prepare_gallery(gallery, metric)
    out = torch.empty(len(query), len(gallery), dtype=g.dtype, device=g.device)
    step = rows_per_block(chunk_size, len(gallery))
    for i in range(0, len(query), step):
        out[i : i + step] = _distance_block(query[i : i + step], g, g_sq, metric)
    return out


def rank_gallery(
    distances: torch.Tensor | np.ndarray,
    query_pid: int,
    query_camid: int,
    gallery_pids: Sequence[int] | np.ndarray,
    gallery_camids: Sequence[int] | np.ndarray,
    topk: int = 10,
) -> tuple[list[int], list[str]]:
    """The ``topk`` nearest gallery entries of one query and each one's verdict.

    Ranking is by increasing distance, equal distances in gallery order, as in the metrics.
    Junk entries (the query's identity *and* camera, which the metrics ignore) stay in the
    list so a picture can show them, with the verdict ``"junk"``; the others are ``"true"``
    (same identity) or ``"false"``.

    Args:
        distances: ``(G,)`` distances from the query to the gallery.
        query_pid: the query's identity.
        query_camid: the query's camera.
        gallery_pids: ``(G,)`` gallery identities.
        gallery_camids: ``(G,)`` gallery cameras.
        topk: list length (at most G).

    Returns:
        ``(indices, verdicts)`` of the ``topk`` entries, nearest first.

    Example:
        >>> rank_gallery([0.5, 0.1, 0.3], 7, 0, [7, 7, 2], [0, 1, 1], topk=3)
        ([1, 2, 0], ['true', 'false', 'junk'])
    """
    dist = np.asarray(torch.as_tensor(distances).detach().cpu(), dtype=np.float64)
    pids, cams = np.asarray(gallery_pids), np.asarray(gallery_camids)
    if dist.ndim != 1 or pids.shape != dist.shape or cams.shape != dist.shape:
        raise ValueError(
            f"distances, gallery_pids and gallery_camids must be (G,) each, got "
            f"{dist.shape}, {pids.shape} and {cams.shape}"
        )
    order = np.argsort(dist, kind="stable")[:topk].tolist()
    verdicts = [
        ("junk" if cams[g] == query_camid else "true") if pids[g] == query_pid else "false"
        for g in order
    ]
    return order, verdicts


def evaluate_features(
    qf: torch.Tensor,
    gf: torch.Tensor,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int = 50,
    chunk_size: int | None = None,
    rerank: bool = False,
    metric: str = "euclidean",
) -> RankResult:
    """Rank the gallery for every query and return CMC, mAP and mINP.

    Without re-ranking, blocks of ``chunk_size`` queries are processed in turn: distances of
    the block, ranking, per-query AP/INP/first hit; no dense Q x G matrix exists. The result is
    that of :func:`~pmm_model.evaluation.metrics.evaluate_rank` on :func:`pairwise_distance`
    (identical whenever the distances are, e.g. always on CPU with exactly representable features).

    Args:
        qf: ``(Q, D)`` query features.
        gf: ``(G, D)`` gallery features on the same device (where the work runs).
        q_pids: ``(Q,)`` query identities.
        g_pids: ``(G,)`` gallery identities.
        q_camids: ``(Q,)`` query cameras.
        g_camids: ``(G,)`` gallery cameras.
        max_rank: Length of the CMC curve.
        chunk_size: Queries per block; default: about 4M distances per block.
        rerank: Apply k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3). It needs dense
            (Q+G)^2 matrices, so use it only for sets that fit in memory.
        metric: ``"euclidean"`` or ``"cosine"``.

    Example:
        >>> f = torch.eye(3)
        >>> r = evaluate_features(f, f, np.array([1, 2, 3]), np.array([1, 2, 3]),
        ...                       np.zeros(3, dtype=int), np.ones(3, dtype=int), max_rank=3)
        >>> r.cmc.tolist(), r.mAP
        ([1.0, 1.0, 1.0], 1.0)
    """
    _check_features(qf, gf, metric)
    if rerank:
        q_g, q_q, g_g = (
            pairwise_distance(a, b, metric, chunk_size).cpu().numpy()
            for a, b in ((qf, gf), (qf, qf), (gf, gf))
        )
        return evaluate_rank(
            re_ranking(q_g, q_q, g_g), q_pids, g_pids, q_camids, g_camids, max_rank
        )
    acc = RankAccumulator(g_pids, g_camids, max_rank)
    if len(q_pids) != len(qf) or len(q_camids) != len(qf):
        raise ValueError(
            f"qf has {len(qf)} rows but q_pids / q_camids have {len(q_pids)} / {len(q_camids)}"
        )
    g, g_sq = _prepare_gallery(gf, metric)
    step = rows_per_block(chunk_size, len(gf))
    for i in range(0, len(qf), step):
        acc.update(
            _distance_block(qf[i : i + step], g, g_sq, metric),
            q_pids[i : i + step],
            q_camids[i : i + step],
        )
    return acc.result()


def evaluate(
    model: nn.Module,
    query_loader: Iterable,
    gallery_loader: Iterable,
    device: torch.device | str,
    flip: bool = False,
    rerank: bool = False,
    max_rank: int = 50,
) -> RankResult:
    """Extract query and gallery features with ``model`` and evaluate them (Euclidean).

    Args:
        model: Maps images to ``(B, D)`` features in eval mode.
        query_loader: Yields ``(images, pids, camids)`` of the query set, unshuffled.
        gallery_loader: Same for the gallery.
        device: Where the model runs and the distances are computed.
        flip: Average features with those of horizontally flipped images.
        rerank: k-reciprocal re-ranking (dense; only for sets that fit in memory).
        max_rank: Length of the CMC curve.

    Example:
        >>> r = evaluate(model, q_loader, g_loader, "cuda")  # doctest: +SKIP
    """
    qf, q_pids, q_camids = extract_features(model, query_loader, device, flip)
    gf, g_pids, g_camids = extract_features(model, gallery_loader, device, flip)
    device = torch.device(device)
    return evaluate_features(
        qf.to(device),
        gf.to(device),
        q_pids,
        g_pids,
        q_camids,
        g_camids,
        max_rank=max_rank,
        rerank=rerank,
    )
