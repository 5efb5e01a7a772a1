"""Re-identification ranking metrics: CMC, mAP and mINP under the Market-1501 protocol.

Protocol, for each query:

- gallery items with the query's pid *and* camera are junk and removed from its ranking
  (the same person seen by the same camera is too easy a match);
- the gallery is ranked by increasing distance; equal distances keep gallery order (the order
  of ``np.argsort(kind="stable")``), so the result is deterministic with ties;
- a query with no remaining gallery item of its pid has no valid match and is skipped;
- AP is the full average precision over the whole ranking (not truncated at ``max_rank``);
- INP = (number of positives) / (rank of the hardest, i.e. last, positive);
- CMC at rank k is the fraction of valid queries whose first positive is within the first k.

The distance rows are ranked where they live (numpy's sort on CPU, torch's on a GPU) and only
each row's few same-pid entries leave the device for the per-query bookkeeping, in numpy; no
compiled extension is needed. Rows are ranked in blocks, so the working memory is bounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["METRIC_KEYS", "RankAccumulator", "RankResult", "evaluate_rank"]

ArrayLike = np.ndarray | torch.Tensor

# Elements of one (rows x gallery) block ranked at a time: the sort values, indices and the
# gathered pids cost ~25 bytes each, so ~100 MB per block whatever the query count.
DEFAULT_BLOCK_ELEMENTS = 1 << 22

# The metrics that a run records after each evaluation and a study compares, as fractions.
METRIC_KEYS = ("rank1", "mAP", "mINP")


@dataclass
class RankResult:
    """Ranking metrics, all in ``[0, 1]``.

    Attributes:
        cmc: ``(max_rank,)`` float64, ``cmc[k - 1]`` = rank-k accuracy.
        mAP: Mean average precision over valid queries.
        mINP: Mean inverse negative penalty over valid queries.
        num_valid_queries: Queries with at least one valid gallery match.
    """

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_valid_queries: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (``cmc`` as a list)."""
        return {
            "cmc": self.cmc.tolist(),
            "mAP": self.mAP,
            "mINP": self.mINP,
            "num_valid_queries": self.num_valid_queries,
        }

    def metrics(self) -> dict[str, float]:
        """Rank-1, mAP and mINP as Python floats, keyed by :data:`METRIC_KEYS`."""
        values = (float(self.cmc[0]), float(self.mAP), float(self.mINP))
        return dict(zip(METRIC_KEYS, values, strict=True))


def _as_tensor(x: ArrayLike, name: str, ndim: int, integer: bool) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")
    if x.dtype == torch.bool or x.dtype.is_complex or (integer and x.dtype.is_floating_point):
        kind = "integers" if integer else "real numbers"
        raise TypeError(f"{name} must hold {kind}, got dtype {x.dtype}")
    return x.detach()


_FLOAT32_EXACT = (torch.float32, torch.float16, torch.bfloat16)


def _stable_order(dist: torch.Tensor) -> torch.Tensor:
    """Per-row ``argsort(kind="stable")`` of a 2-D tensor, on its device."""
    if dist.dtype not in _FLOAT32_EXACT:
        return torch.sort(dist, dim=1, stable=True).indices
    # Pack (distance, column) into one unique int64 key: sorting the keys' values gives the
    # stable order (ties by column) without an index sort, which is ~3x slower on CPU.
    # Adding 0.0 turns -0.0 into +0.0, which a sort treats as equal.
    bits = (dist.float() + 0.0).view(torch.int32)
    # Flip the magnitude bits of negative floats so that the int32s order like the floats.
    bits ^= (bits >> 31) & 0x7FFFFFFF
    keys = bits.long()
    keys <<= 32
    keys |= torch.arange(dist.shape[1], device=dist.device)
    if keys.device.type == "cpu":
        # numpy's vectorised (SIMD) value sort beats torch's CPU sort several times here.
        keys.numpy().sort(axis=1)
    else:
        keys = torch.sort(keys, dim=1).values
    keys &= 0xFFFFFFFF
    return keys


class RankAccumulator:
    """Ranks blocks of distance rows and keeps only per-query results.

    Feeding the rows of a distance matrix in any number of blocks gives exactly the result of
    feeding it whole, so a large evaluation never needs the dense query x gallery matrix.

    Args:
        g_pids: ``(G,)`` gallery identities.
        g_camids: ``(G,)`` gallery cameras.
        max_rank: Length of the CMC curve.

    Example:
        >>> acc = RankAccumulator(np.array([1, 2]), np.array([0, 1]), max_rank=2)
        >>> acc.update(np.array([[0.5, 0.1]]), np.array([1]), np.array([1]))
        >>> acc.result().mAP
        0.5
    """

    def __init__(self, g_pids: ArrayLike, g_camids: ArrayLike, max_rank: int = 50) -> None:
        if isinstance(max_rank, bool) or not isinstance(max_rank, int) or max_rank < 1:
            raise ValueError(f"max_rank must be a positive int, got {max_rank!r}")
        self.g_pids = _as_tensor(g_pids, "g_pids", 1, integer=True).long()
        self.g_camids = _as_tensor(g_camids, "g_camids", 1, integer=True).long()
        if self.g_pids.shape != self.g_camids.shape or len(self.g_pids) == 0:
            raise ValueError(
                f"g_pids and g_camids must be non-empty and of equal length, got "
                f"{tuple(self.g_pids.shape)} and {tuple(self.g_camids.shape)}"
            )
        self.max_rank = max_rank
        self._ap: list[np.ndarray] = []
        self._inp: list[np.ndarray] = []
        self._first: list[np.ndarray] = []

    def update(self, dist_rows: ArrayLike, q_pids: ArrayLike, q_camids: ArrayLike) -> None:
        """Rank ``(R, G)`` distances of R queries and record their AP, INP and first hit."""
        dist = _as_tensor(dist_rows, "distmat", 2, integer=False)
        q_pids = _as_tensor(q_pids, "q_pids", 1, integer=True).long().to(dist.device)
        q_camids = _as_tensor(q_camids, "q_camids", 1, integer=True).long().to(dist.device)
        num_q, num_g = dist.shape
        if num_g != len(self.g_pids):
            raise ValueError(f"distmat has {num_g} columns but g_pids has {len(self.g_pids)}")
        if q_pids.shape != (num_q,) or q_camids.shape != (num_q,):
            raise ValueError(
                f"distmat has {num_q} rows but q_pids / q_camids have shapes "
                f"{tuple(q_pids.shape)} / {tuple(q_camids.shape)}"
            )
        if torch.isnan(dist).any():
            raise ValueError("distmat contains NaN; the ranking would be undefined")
        g_pids = self.g_pids.to(dist.device)
        g_camids = self.g_camids.to(dist.device)

        order = _stable_order(dist)
        # Only same-pid entries matter: they are the positives and the junk. Everything after
        # this line works on those few entries per row, in numpy.
        rows, cols = (g_pids[order] == q_pids[:, None]).nonzero(as_tuple=True)
        junk = g_camids[order[rows, cols]] == q_camids[rows]
        self._add(rows.cpu().numpy(), cols.cpu().numpy(), junk.cpu().numpy(), num_q)

    def _add(self, rows: np.ndarray, cols: np.ndarray, junk: np.ndarray, num_q: int) -> None:
        # rows/cols list each row's same-pid entries in ranking order (row-major nonzero).
        counts = np.bincount(rows, minlength=num_q)
        starts = np.cumsum(counts) - counts
        # Junk entries ranked before each entry of its row: the rank among kept items of an
        # entry at 0-based sorted position c is c + 1 - (junk before it).
        junk_excl = np.cumsum(junk) - junk
        junk_before = junk_excl - junk_excl[starts[rows]]
        pos = ~junk
        prow = rows[pos]
        rank = (cols - junk_before)[pos] + 1
        n_pos = np.bincount(prow, minlength=num_q)
        # k-th positive of its row (1-based): precision at it is k / rank.
        pstarts = np.cumsum(n_pos) - n_pos
        hits = np.arange(1, len(prow) + 1) - pstarts[prow]
        precision = hits / rank
        valid = n_pos > 0
        if not valid.any():
            return
        n_pos, pstarts = n_pos[valid], pstarts[valid]
        # reduceat sums each row's precisions on their own, so results do not depend on how
        # the queries were split into blocks.
        self._ap.append(np.add.reduceat(precision, pstarts) / n_pos)
        self._inp.append(n_pos / rank[pstarts + n_pos - 1])
        self._first.append(rank[pstarts])

    def result(self) -> RankResult:
        """Metrics over every query fed so far.

        Raises:
            ValueError: No query had a valid gallery match.
        """
        if not self._ap:
            raise ValueError(
                "no query has a valid gallery match (same pid from another camera); "
                "check the pids and camids"
            )
        ap = np.concatenate(self._ap)
        first = np.concatenate(self._first)
        # A gallery shorter than max_rank needs no special case: every first hit is within
        # the gallery, so the curve is flat (its last value) past the gallery's length.
        hist = np.bincount(np.minimum(first, self.max_rank + 1), minlength=self.max_rank + 2)
        cmc = np.cumsum(hist[1 : self.max_rank + 1]) / len(ap)
        return RankResult(
            cmc=cmc,
            mAP=float(ap.mean()),
            mINP=float(np.concatenate(self._inp).mean()),
            num_valid_queries=len(ap),
        )


def evaluate_rank(
    distmat: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int = 50,
    chunk_size: int | None = None,
) -> RankResult:
    """CMC, mAP and mINP of a query x gallery distance matrix (Market-1501 protocol).

    Args:
        distmat: ``(Q, G)`` distances (numpy or torch, CPU or GPU); smaller is more similar.
            float32 (or half) distances rank fastest; other dtypes use a slower index sort.
        q_pids: ``(Q,)`` query identities.
        g_pids: ``(G,)`` gallery identities.
        q_camids: ``(Q,)`` query cameras.
        g_camids: ``(G,)`` gallery cameras.
        max_rank: Length of the CMC curve. With fewer gallery items the curve is padded with
            its last value.
        chunk_size: Query rows ranked at a time (bounds the working memory); default: about
            4M matrix elements per block.

    Returns:
        A :class:`RankResult`.

    Raises:
        ValueError: Shapes disagree, ``distmat`` has NaN, or no query has a valid match.
        TypeError: Non-integer pids/camids or a non-array argument.

    Example:
        >>> d = np.array([[0.1, 0.2, 0.3]])
        >>> r = evaluate_rank(d, np.array([1]), np.array([2, 1, 1]), np.array([0]),
        ...                   np.array([1, 1, 1]), max_rank=3)
        >>> r.cmc.tolist(), round(r.mAP, 4)
        ([0.0, 1.0, 1.0], 0.5833)
    """
    dist = _as_tensor(distmat, "distmat", 2, integer=False)
    q_pids = _as_tensor(q_pids, "q_pids", 1, integer=True)
    q_camids = _as_tensor(q_camids, "q_camids", 1, integer=True)
    acc = RankAccumulator(g_pids, g_camids, max_rank)
    num_q, num_g = dist.shape
    if q_pids.shape != (num_q,) or q_camids.shape != (num_q,):
        raise ValueError(
            f"distmat has {num_q} rows but q_pids / q_camids have shapes "
            f"{tuple(q_pids.shape)} / {tuple(q_camids.shape)}"
        )
    step = rows_per_block(chunk_size, num_g)
    for i in range(0, num_q, step):
        acc.update(dist[i : i + step], q_pids[i : i + step], q_camids[i : i + step])
    return acc.result()


def rows_per_block(chunk_size: int | None, num_g: int) -> int:
    """Query rows per block of distances: ``chunk_size``, or by default as many as keep a block
    near ``DEFAULT_BLOCK_ELEMENTS`` distances against ``num_g`` gallery items.

    Raises:
        ValueError: ``chunk_size`` is neither None nor a positive int.
    """
    if chunk_size is None:
        return max(1, DEFAULT_BLOCK_ELEMENTS // max(num_g, 1))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    return chunk_size
