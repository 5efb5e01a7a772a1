"""An independent, deliberately simple A-Hard-Mix: Python loops over samples, cells and blocks.

Saliency and block scores are computed in float64. The gradient is accumulated in the op's
documented accumulation dtype (float32, float64 for float64) in the documented order -- own
gradient first, then each taker in ascending sample order -- so the op must match it bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class OracleResult:
    out: torch.Tensor
    partners: list[int]
    blocks: list[list[int]]
    mask: torch.Tensor
    lam: torch.Tensor


def oracle_partners(u: torch.Tensor, labels: torch.Tensor) -> list[int]:
    labels_list = labels.tolist()
    partners = []
    for i, label in enumerate(labels_list):
        others = [j for j, other in enumerate(labels_list) if other != label]
        if not others:
            partners.append(-1)
            continue
        rank = min(math.floor(float(u[i]) * len(others)), len(others) - 1)
        partners.append(others[rank])
    return partners


def oracle_saliency(x: np.ndarray, a: np.ndarray) -> np.ndarray:
    """(N, H, W) float64 saliency: ``a`` itself if a map, else ReLU(sum_c a * x), NaN kept."""
    n, _, h, w = x.shape
    saliency = np.zeros((n, h, w))
    for i in range(n):
        for r in range(h):
            for q in range(w):
                if a.ndim == 3:
                    saliency[i, r, q] = a[i, r, q]
                else:
                    s = float(np.dot(a[i], x[i, :, r, q]))
                    saliency[i, r, q] = s if (math.isnan(s) or s > 0) else 0.0
    return saliency


def oracle_forward(
    feat: torch.Tensor,
    attn: torch.Tensor,
    labels: torch.Tensor,
    *,
    block_size: tuple[int, int],
    num_blocks: int,
    u: torch.Tensor | None = None,
    partners: torch.Tensor | None = None,
) -> OracleResult:
    x = feat.detach().cpu().double().numpy()
    a = attn.detach().cpu().double().numpy()
    n, _, h, w = x.shape
    bh, bw = block_size
    rows, cols = math.ceil(h / bh), math.ceil(w / bw)

    saliency = oracle_saliency(x, a)

    def cells(block: int) -> list[tuple[int, int]]:
        top, left = (block // cols) * bh, (block % cols) * bw
        return [
            (r, q) for r in range(top, min(top + bh, h)) for q in range(left, min(left + bw, w))
        ]

    blocks = []
    for i in range(n):
        scores = [sum(saliency[i, r, q] for r, q in cells(b)) for b in range(rows * cols)]

        def rank_key(b: int, scores=scores) -> tuple:
            finite = math.isfinite(scores[b])
            return (0, -scores[b], b) if finite else (1, 0.0, b)

        blocks.append(sorted(range(rows * cols), key=rank_key)[:num_blocks])

    chosen = oracle_partners(u, labels) if partners is None else partners.tolist()
    out = feat.detach().clone()
    mask = torch.zeros(n, h, w, dtype=torch.bool)
    for i in range(n):
        if chosen[i] < 0:
            continue
        for b in blocks[i]:
            for r, q in cells(b):
                mask[i, r, q] = True
                out[i, :, r, q] = feat.detach()[chosen[i], :, r, q]
    lam = torch.tensor([float(mask[i].sum()) / (h * w) for i in range(n)], dtype=torch.float32)
    return OracleResult(out, chosen, blocks, mask, lam)


def oracle_backward(
    grad_out: torch.Tensor, partners: list[int], mask: torch.Tensor
) -> torch.Tensor:
    acc = np.float64 if grad_out.dtype == torch.float64 else np.float32
    g = grad_out.detach().cpu().to(torch.float64 if acc is np.float64 else torch.float32).numpy()
    n, c, h, w = g.shape
    result = np.zeros((n, c, h, w), dtype=acc)
    for i in range(n):
        for r in range(h):
            for q in range(w):
                total = np.zeros(c, dtype=acc) if mask[i, r, q] else g[i, :, r, q].copy()
                for j in range(n):
                    if partners[j] == i and mask[j, r, q]:
                        total = total + g[j, :, r, q]
                result[i, :, r, q] = total
    return torch.from_numpy(result).to(grad_out.dtype)
