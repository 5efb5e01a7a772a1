"""k-reciprocal re-ranking (Zhong, Zheng, Cao, Li, "Re-ranking person re-identification with
k-reciprocal encoding", CVPR 2017).

Re-ranking needs the dense (Q+G) x (Q+G) distance matrix and dense encoding matrices of the
same size: about three float32 (Q+G)^2 matrices at its peak, plus the inputs, i.e. ~4.5 GB at
Market-1501 scale (19,281 images). Use it only for sets whose square fits in memory; plain
evaluation (:func:`pmm_model.evaluation.evaluator.evaluate_features`) never builds a dense matrix.
"""

from __future__ import annotations

import numpy as np

__all__ = ["re_ranking"]

# Rows processed at a time where a step creates (rows, k1, k1/2, k1)-sized temporaries or
# (rows, N) copies; bounds the extra memory to a few hundred MB at Market scale.
_ROW_BLOCK = 512


def _check_matrix(x: np.ndarray, name: str, shape: tuple[int, int]) -> np.ndarray:
    x = np.asarray(x)
    if x.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
        raise ValueError(f"{name} must hold finite real distances (dtype {x.dtype})")
    return x.astype(np.float32, copy=False)


def _nearest(dist: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k nearest items of each row, nearest first, ties to the lower index:
    exactly ``np.argsort(dist, axis=1, kind="stable")[:, :k]`` without sorting whole rows."""
    n = dist.shape[1]
    out = np.empty((dist.shape[0], k), dtype=np.int64)
    for i in range(0, dist.shape[0], _ROW_BLOCK):
        block = dist[i : i + _ROW_BLOCK]
        # The bits of a non-negative float32 order like its value; appending the column index
        # makes every key unique, so partitioning cannot split a tie the wrong way.
        key = (block.view(np.int32).astype(np.int64) << 32) | np.arange(n)
        part = np.argpartition(key, k - 1, axis=1)[:, :k]
        out[i : i + _ROW_BLOCK] = np.take_along_axis(
            part, np.argsort(np.take_along_axis(key, part, axis=1), axis=1), axis=1
        )
    return out


def _reciprocal(neighbours: np.ndarray) -> np.ndarray:
    """mask[i, a]: item i is among the neighbours of its a-th neighbour."""
    items = np.arange(len(neighbours))[:, None, None]
    return (neighbours[neighbours] == items).any(axis=-1)


def re_ranking(
    q_g_dist: np.ndarray,
    q_q_dist: np.ndarray,
    g_g_dist: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray:
    """Re-ranked query x gallery distances.

    As in the authors' method: the input distances are squared and each row of the joint
    (Q+G) x (Q+G) matrix divided by its maximum. Each item's k1-reciprocal neighbours are
    expanded with those of its reciprocal neighbours whose k1/2-reciprocal set shares more
    than 2/3 of its members, weighted by ``exp(-distance)`` into a unit-sum vector, averaged
    over the k2 nearest items (local query expansion), and compared with the Jaccard distance.
    The result is ``(1 - lambda_value) * jaccard + lambda_value * normalised distance``.

    Args:
        q_g_dist: ``(Q, G)`` query-gallery distances (plain Euclidean, not squared).
        q_q_dist: ``(Q, Q)`` query-query distances.
        g_g_dist: ``(G, G)`` gallery-gallery distances.
        k1: Reciprocal neighbourhood size.
        k2: Query-expansion neighbourhood size (1 disables it).
        lambda_value: Weight of the original distance, in ``[0, 1]``.

    Returns:
        ``(Q, G)`` float32 distances.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(9, 4))
        >>> d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        >>> re_ranking(d[:3, 3:], d[:3, :3], d[3:, 3:], k1=4, k2=2).shape
        (3, 6)
    """
    q_g_dist = np.asarray(q_g_dist)
    if q_g_dist.ndim != 2:
        raise ValueError(f"q_g_dist must be 2-D, got shape {q_g_dist.shape}")
    num_q, num_g = q_g_dist.shape
    q_q_dist = _check_matrix(q_q_dist, "q_q_dist", (num_q, num_q))
    g_g_dist = _check_matrix(g_g_dist, "g_g_dist", (num_g, num_g))
    q_g_dist = _check_matrix(q_g_dist, "q_g_dist", (num_q, num_g))
    for name, k in (("k1", k1), ("k2", k2)):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"{name} must be a positive int, got {k!r}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value!r}")

    n = num_q + num_g
    dist = np.block([[q_q_dist, q_g_dist], [q_g_dist.T, g_g_dist]])
    np.square(dist, out=dist)
    # The joint matrix is symmetric, so this equals the authors' column-max normalisation.
    dist /= np.maximum(dist.max(axis=1, keepdims=True), np.finfo(np.float32).tiny)

    k_full, k_half = min(k1 + 1, n), min(round(k1 / 2) + 1, n)
    k2 = min(k2, n)
    nearest = _nearest(dist, max(k_full, k2))
    fwd, fwd_h = nearest[:, :k_full], nearest[:, :k_half]
    recip, recip_h = _reciprocal(fwd), _reciprocal(fwd_h)

    weights = np.zeros((n, n), dtype=np.float32)
    for i in range(0, n, _ROW_BLOCK):
        rows = slice(i, i + _ROW_BLOCK)
        own, own_ok = fwd[rows], recip[rows]  # R(i, k1): (r, K)
        cand, cand_ok = fwd_h[own], recip_h[own]  # R(c, k1/2) per c: (r, K, Kh)
        in_own = ((cand[..., None] == own[:, None, None, :]) & own_ok[:, None, None, :]).any(
            axis=-1
        )
        shared = (in_own & cand_ok).sum(axis=-1)
        # "more than 2/3 of the candidate's set" in integers, free of rounding.
        accept = own_ok & (3 * shared > 2 * cand_ok.sum(axis=-1))
        row_ids = np.arange(i, i + len(own))
        r_own = np.broadcast_to(row_ids[:, None], own.shape)[own_ok]
        take = accept[..., None] & cand_ok
        r_cand = np.broadcast_to(row_ids[:, None, None], cand.shape)[take]
        r, c = np.concatenate([r_own, r_cand]), np.concatenate([own[own_ok], cand[take]])
        # Repeated (r, c) pairs write the same value, which makes the union of the sets.
        weights[r, c] = np.exp(-dist[r, c])
    weights /= weights.sum(axis=1, keepdims=True)

    if k2 > 1:
        expanded = np.empty_like(weights)
        for i in range(0, n, _ROW_BLOCK):
            expanded[i : i + _ROW_BLOCK] = weights[nearest[i : i + _ROW_BLOCK, :k2]].mean(axis=1)
        weights = expanded

    # Rows of `weights` sum to 1, so sum(max) = 2 - sum(min) and the Jaccard distance needs
    # only the minima, over the few columns where the query's row is non-zero.
    gallery_t = np.ascontiguousarray(weights[num_q:].T)
    jaccard = np.empty((num_q, num_g), dtype=np.float32)
    for i in range(num_q):
        nz = np.flatnonzero(weights[i])
        common = np.minimum(weights[i, nz][:, None], gallery_t[nz]).sum(axis=0)
        jaccard[i] = 1.0 - common / (2.0 - common)
    return (1.0 - lambda_value) * jaccard + lambda_value * dist[:num_q, num_q:]
