"""PyTorch path of A-Hard-Mix: the CPU implementation, the Triton kernels' baseline and oracle.

Everything here is vectorised over samples and blocks, runs on any device, never reads a value back
to the host, and moves feature values only by copying them, so the mixed output is bit-exact.

The forward pass copies ``feat`` and then overwrites just the selected cells (``k * bh * bw`` per
sample), and the backward pass masks ``grad_out`` and adds the partners' cells back with one
ordered ``index_add_``: both touch the feature map about once, as the Triton kernels do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Scores and gradients accumulate in float32, or float64 for float64 features."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def block_grid(height: int, width: int, block_size: tuple[int, int]) -> tuple[int, int]:
    """Rows and columns of the block grid; edge blocks are clipped to the map."""
    bh, bw = block_size
    return -(-height // bh), -(-width // bw)


def saliency_torch(feat: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``ReLU(sum_c weights[n, c] * feat[n, c, h, w])`` as an (N, H, W) map (NaN stays NaN)."""
    acc = accumulation_dtype(feat.dtype)
    # Under autocast the einsum would run in half precision; block scores accumulate in float32.
    with torch.autocast(feat.device.type, enabled=False):
        return torch.relu(torch.einsum("nc,nchw->nhw", weights.to(acc), feat.to(acc)))


def block_scores_torch(saliency: torch.Tensor, block_size: tuple[int, int]) -> torch.Tensor:
    """Sum of the saliency over each block, (N, rows * cols) in row-major block order."""
    n, h, w = saliency.shape
    bh, bw = block_size
    rows, cols = block_grid(h, w, block_size)
    # Zero padding to whole blocks leaves every block sum unchanged (NaN still propagates).
    padded = F.pad(saliency, (0, cols * bw - w, 0, rows * bh - h))
    return padded.view(n, rows, bh, cols, bw).sum(dim=(2, 4)).flatten(1)


def select_blocks(scores: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """Indices of the ``num_blocks`` best blocks per sample, best first.

    Non-finite scores rank below every finite one; a stable sort sends ties to the lower index.
    """
    keys = scores.masked_fill(~torch.isfinite(scores), float("-inf"))
    return torch.sort(keys, dim=1, descending=True, stable=True).indices[:, :num_blocks]


def sample_partners(u: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Partner of each sample: the ``floor(u_i * m_i)``-th sample with another label, or -1.

    ``m_i`` counts the samples whose label differs from sample i's; the product is formed in
    float64, where it is exact, so every backend agrees on the partner.
    """
    differs = labels[None, :] != labels[:, None]
    num_negatives = differs.sum(dim=1)
    rank = torch.minimum((u.double() * num_negatives).long(), num_negatives - 1)
    hit = differs & (differs.cumsum(dim=1) - 1 == rank[:, None])
    first_hit = hit.to(torch.uint8).argmax(dim=1)
    return torch.where(num_negatives > 0, first_hit, -1)


def block_cells(
    blocks: torch.Tensor, height: int, width: int, block_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cell coordinates of the selected blocks, (N, k * bh * bw) each, plus which ones exist.

    Cells that an edge block loses to clipping alias the block's first cell, which always exists,
    so every coordinate is safe to index with.
    """
    bh, bw = block_size
    _, cols = block_grid(height, width, block_size)
    top = (blocks // cols * bh)[..., None, None]
    left = (blocks % cols * bw)[..., None, None]
    rows = top + torch.arange(bh, device=blocks.device).view(bh, 1)
    columns = left + torch.arange(bw, device=blocks.device).view(1, bw)
    exists = (rows < height) & (columns < width)
    rows = torch.where(exists, rows, top)
    columns = torch.where(exists, columns, left)
    return rows.flatten(1), columns.flatten(1), exists.flatten(1)


def plan_torch(
    feat: torch.Tensor,
    attn: torch.Tensor,
    labels: torch.Tensor,
    u: torch.Tensor | None,
    negatives: torch.Tensor | None,
    block_size: tuple[int, int],
    num_blocks: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Selected blocks (N, k) and partners (N,): the decisions of SPEC steps 1-3."""
    saliency = saliency_torch(feat, attn) if attn.dim() == 2 else attn.to(
        accumulation_dtype(feat.dtype)
    )
    blocks = select_blocks(block_scores_torch(saliency, block_size), num_blocks)
    # Given partners are copied: a custom op's outputs may not alias its inputs.
    partners = sample_partners(u, labels) if negatives is None else negatives.clone()
    return blocks, partners


def a_hard_mix_forward_torch(
    feat: torch.Tensor,
    attn: torch.Tensor,
    labels: torch.Tensor,
    u: torch.Tensor | None,
    negatives: torch.Tensor | None,
    block_size: tuple[int, int],
    num_blocks: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixed features and ``(negatives, blocks, mask, lam)``; see :func:`pmm_kernels.a_hard_mix`."""
    n, _, h, w = feat.shape
    blocks, partners = plan_torch(feat, attn, labels, u, negatives, block_size, num_blocks)
    rows, columns, _ = block_cells(blocks, h, w, block_size)
    mixed = partners >= 0
    samples = torch.arange(n, device=feat.device)[:, None]

    mask = torch.zeros(n, h, w, dtype=torch.bool, device=feat.device)
    mask[samples, rows, columns] = mixed[:, None].expand_as(rows)
    lam = mask.sum(dim=(1, 2)).to(torch.float32) / (h * w)

    out = feat.clone(memory_format=torch.preserve_format)
    sources = torch.where(mixed, partners, samples[:, 0])[:, None]
    out[samples, :, rows, columns] = feat[sources, :, rows, columns]
    return out, partners, blocks, mask, lam


def a_hard_mix_backward_torch(
    grad_out: torch.Tensor,
    negatives: torch.Tensor,
    blocks: torch.Tensor,
    mask: torch.Tensor,
    block_size: tuple[int, int],
) -> torch.Tensor:
    """Gradient w.r.t. ``feat``: the transpose of the forward gather (SPEC step 5).

    Accumulates in float32 (float64 for float64): each cell starts from its own gradient where it
    was kept, then receives the gradients of the samples that took it, in ascending sample order.
    CPU ``index_add_`` on a 1-D tensor adds strictly in index order, which fixes that order;
    on CUDA it adds atomically, so the last bits may vary between runs there.
    """
    n, _, h, w = grad_out.shape
    acc = accumulation_dtype(grad_out.dtype)
    grad = grad_out.to(acc)
    grad_feat = torch.empty_like(grad)
    torch.where(mask[:, None], grad.new_zeros(()), grad, out=grad_feat)

    rows, columns, exists = block_cells(blocks, h, w, block_size)
    samples = torch.arange(n, device=grad.device)[:, None]
    taken = grad[samples, :, rows, columns]  # (N, cells, C)
    # Adding -0.0 leaves every value, -0.0 included, exactly as it was: the padding cells and the
    # unmixed samples contribute nothing without a data-dependent (host-syncing) filter.
    contributes = exists & (negatives >= 0)[:, None]
    taken.masked_fill_(~contributes[..., None], -0.0)

    channels = torch.arange(grad.shape[1], device=grad.device)
    s_n, s_c, s_h, s_w = grad_feat.stride()
    targets = (
        (negatives.clamp_min(0)[:, None] * s_n + rows * s_h + columns * s_w)[..., None]
        + channels * s_c
    )
    # grad_feat is freshly allocated and dense, so its storage is a flat array of numel elements.
    flat = grad_feat.as_strided((grad_feat.numel(),), (1,))
    flat.index_add_(0, targets.flatten(), taken.flatten())
    return grad_feat.to(grad_out.dtype)
