"""An independent, deliberately simple feature-mix family (docs/op.md#feature-mix-family): loops.

It makes its own random draws from a fresh CPU generator, in the order of docs/op.md#draws, so a
test that seeds the op's generator the same way checks the draws too. Saliency and block scores are
float64; partner ranks use Python floats. The backward is ``a_hard_mix.oracle_backward`` (the family
shares the backward of docs/op.md#gradient; zeroing modes have partner -1 everywhere).
"""

from __future__ import annotations

import math

import torch

from .a_hard_mix import OracleResult, oracle_saliency

ATTENTIVE = ("a_hard_mix", "a_cutmix")
RANDOM = ("hard_mix", "cutmix", "cutout")
RULES = {
    "a_hard_mix": "different_label",
    "hard_mix": "different_label",
    "a_cutmix": "any_other",
    "cutmix": "any_other",
    "cutout": "none",
    "batch_drop": "none",
}


def _pick(u: float, candidates: list[int]) -> int:
    if not candidates:
        return -1
    return candidates[min(math.floor(u * len(candidates)), len(candidates) - 1)]


def oracle_mix(
    feat: torch.Tensor,
    labels: torch.Tensor | None,
    attn: torch.Tensor | None,
    *,
    mode: str,
    block_size: tuple[int, int] = (3, 2),
    num_blocks: int = 3,
    seed: int = 0,
    partners: torch.Tensor | None = None,
    h_ratio: float = 0.33,
    w_ratio: float = 1.0,
) -> OracleResult:
    generator = torch.Generator().manual_seed(seed)
    x = feat.detach().cpu()
    n, _, h, w = x.shape
    bh, bw = block_size
    rows, cols = math.ceil(h / bh), math.ceil(w / bw)

    def cells(block: int) -> list[tuple[int, int]]:
        top, left = (block // cols) * bh, (block % cols) * bw
        return [
            (r, q) for r in range(top, min(top + bh, h)) for q in range(left, min(left + bw, w))
        ]

    chosen: list[set[tuple[int, int]]] = []
    blocks: list[list[int]] = []
    if mode in ATTENTIVE:
        s = oracle_saliency(x.double().numpy(), attn.detach().cpu().double().numpy())
        for i in range(n):
            scores = [sum(s[i, r, q] for r, q in cells(b)) for b in range(rows * cols)]
            order = sorted(
                range(rows * cols),
                key=lambda b, sc=scores: (0, -sc[b], b) if math.isfinite(sc[b]) else (1, 0.0, b),
            )
            blocks.append(order[:num_blocks])
    elif mode in RANDOM:
        keys = torch.rand(n, rows * cols, generator=generator).tolist()
        for i in range(n):
            order = sorted(range(rows * cols), key=lambda b, k=keys[i]: (-k[b], b))
            blocks.append(order[:num_blocks])
    else:  # batch_drop
        rh, rw = max(1, round(h_ratio * h)), max(1, round(w_ratio * w))
        u0, u1 = torch.rand(2, generator=generator).tolist()
        top, left = math.floor(u0 * (h - rh + 1)), math.floor(u1 * (w - rw + 1))
        rect = {(r, q) for r in range(top, top + rh) for q in range(left, left + rw)}
        blocks = [[-1] for _ in range(n)]
        chosen = [rect] * n
    if mode != "batch_drop":
        chosen = [{cell for b in blocks[i] for cell in cells(b)} for i in range(n)]

    rule = RULES[mode]
    if rule == "none":
        drawn = [-1] * n
    elif partners is not None:
        drawn = partners.tolist()
    else:
        u = torch.rand(n, generator=generator).tolist()
        label_list = labels.tolist()
        drawn = []
        for i in range(n):
            if rule == "different_label":
                candidates = [j for j in range(n) if label_list[j] != label_list[i]]
            else:
                candidates = [j for j in range(n) if j != i]
            drawn.append(_pick(u[i], candidates))

    out = x.clone()
    mask = torch.zeros(n, h, w, dtype=torch.bool)
    for i in range(n):
        if rule != "none" and drawn[i] < 0:
            continue
        for r, q in chosen[i]:
            mask[i, r, q] = True
            out[i, :, r, q] = 0 if rule == "none" else x[drawn[i], :, r, q]
    lam = torch.tensor([float(mask[i].sum()) / (h * w) for i in range(n)], dtype=torch.float32)
    return OracleResult(out, drawn, blocks, mask, lam)


def oracle_targets(labels, partners, lam, num_classes, smoothing, mixes_labels):
    rows = []
    for i, y in enumerate(labels.tolist()):
        t = [0.0] * num_classes
        p = partners[i]
        share = float(lam[i]) if (mixes_labels and p >= 0) else 0.0
        t[y] += 1 - share
        if share:
            t[labels.tolist()[p]] += share
        rows.append([v * (1 - smoothing) + smoothing / num_classes for v in t])
    return torch.tensor(rows, dtype=torch.float64)
