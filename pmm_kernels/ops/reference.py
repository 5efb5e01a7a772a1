"""PyTorch path of the feature-mix family: the CPU implementation, the kernels' baseline and oracle.

Everything here is vectorised over samples and blocks, runs on any device, never reads a value back
to the host, and moves feature values only by copying them (or writing zeros), so the mixed output
is bit-exact.

The forward pass copies ``feat`` and then overwrites just the selected cells
(``num_blocks * bh * bw`` per sample), and the backward pass masks ``grad_out`` (or copies it
and rewrites the selected cells, where channels are innermost) and adds the partners' cells back
with one ordered ``index_add_``: both touch the feature map about once, as the Triton kernels do.
"""

from __future__ import annotations

import math

import torch

from pmm_kernels.ops.plan import MixPlan
from pmm_kernels.ops.utils import (
    accumulation_dtype,
    block_cells,
    block_scores_torch,
    rectangle_mask,
    sample_partners,
    select_top_k,
)

__all__ = [
    "a_hard_mix_backward_torch",
    "feature_mix_backward_torch",
    "feature_mix_forward_torch",
    "replay_mix_torch",
    "saliency_torch",
    "zeroed_backward_torch",
]


def saliency_torch(feat: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``ReLU(sum_c weights[n, c] * feat[n, c, h, w])`` as an (N, H, W) map (NaN stays NaN)."""
    acc = accumulation_dtype(feat.dtype)
    # Under autocast the einsum would run in half precision; block scores accumulate in float32.
    with torch.autocast(feat.device.type, enabled=False):
        return torch.relu(torch.einsum("nc,nchw->nhw", weights.to(acc), feat.to(acc)))


def feature_mix_forward_torch(
    feat: torch.Tensor, plan: MixPlan, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixed features and ``(partners, blocks, mask, lam)`` for every mode
    (docs/op.md#feature-mix-family).

    ``plan.cells`` chooses the cells: the top k blocks by saliency (``"weights"``, ``"map"``) or
    by random keys (``"keys"``), or ``batch_drop``'s rectangle of size ``plan.block_size``
    (``"corner"``, ``blocks`` all -1). Inputs are already validated. ``out``, when given, is
    where the mixed features are written (feat's shape and dtype, any strides, not overlapping
    ``feat``: the patch view of the output tokens); else a new tensor in feat's memory format.
    """
    n, _, h, w = feat.shape
    block_size, cells = plan.block_size, plan.cells
    partners = sample_partners(plan.u, plan.labels, plan.partner_rule, plan.given_partners)
    zeroing = not plan.from_partner
    takes = torch.ones_like(partners, dtype=torch.bool) if zeroing else partners >= 0
    out = feat.clone(memory_format=torch.preserve_format) if out is None else out.copy_(feat)

    if cells.kind == "corner":
        blocks = torch.full((n, 1), -1, dtype=torch.int64, device=feat.device)
        mask = rectangle_mask(cells.values, block_size, h, w).expand(n, h, w).contiguous()
        out.masked_fill_(mask[:, None], 0)
    else:
        if cells.kind == "keys":
            scores = cells.values
        else:
            saliency = (
                saliency_torch(feat, cells.values)
                if cells.kind == "weights"
                else cells.values.to(accumulation_dtype(feat.dtype))
            )
            scores = block_scores_torch(saliency, block_size)
        blocks = select_top_k(scores, plan.num_blocks)
        rows, columns, _ = block_cells(blocks, h, w, block_size)
        samples = torch.arange(n, device=feat.device)[:, None]
        mask = torch.zeros(n, h, w, dtype=torch.bool, device=feat.device)
        mask[samples, rows, columns] = takes[:, None].expand_as(rows)
        if zeroing:
            out[samples, :, rows, columns] = 0
        else:
            # An unmixed sample (partner -1) copies its own cells: a no-op without a branch.
            sources = torch.where(takes, partners, samples[:, 0])[:, None]
            out[samples, :, rows, columns] = feat[sources, :, rows, columns]
    lam = mask.sum(dim=(1, 2)).to(torch.float32) / (h * w)
    return out, partners, blocks, mask, lam


def feature_mix_backward_torch(
    grad_out: torch.Tensor,
    partners: torch.Tensor,
    blocks: torch.Tensor,
    mask: torch.Tensor,
    block_size: tuple[int, int],
    from_partner: bool,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gradient w.r.t. ``feat`` of any mode (docs/op.md#gradient); ``from_partner`` False for
    the zeroing modes, whose cells have no source. Written into ``out`` when given (grad_out's
    shape and dtype, any strides), else into a new tensor."""
    if not from_partner:
        return zeroed_backward_torch(grad_out, mask, out)
    return a_hard_mix_backward_torch(grad_out, partners, blocks, mask, block_size, out)


def replay_mix_torch(x: torch.Tensor, partners: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The forward copy of a mix applied to ``x`` with a given plan (docs/op.md#copy).

    ``out[i, :, p] = x[partners[i], :, p]`` where ``mask[i, p]`` and ``partners[i] >= 0``, 0 where
    ``mask[i, p]`` and ``partners[i] == -1`` (the zeroing modes), else ``x[i, :, p]``. The
    adjoint of the backward pass, so its gradient; made of differentiable PyTorch ops, so every
    higher derivative follows.
    """
    has_partner = (partners >= 0)[:, None, None, None]
    taken = torch.where(has_partner, x[partners.clamp_min(0)], x.new_zeros(()))
    return torch.where(mask[:, None], taken, x)


def a_hard_mix_backward_torch(
    grad_out: torch.Tensor,
    partners: torch.Tensor,
    blocks: torch.Tensor,
    mask: torch.Tensor,
    block_size: tuple[int, int],
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gradient w.r.t. ``feat`` of every mode that takes blocks from a partner
    (docs/op.md#gradient), into ``out`` when given.

    Accumulates in float32 (float64 for float64): each cell starts from its own gradient where it
    was kept, then receives the gradients of the samples that took it, in ascending sample order.
    CPU ``index_add_`` adds strictly in index order, which fixes that order; on CUDA it adds
    atomically, so the last bits may vary between runs there.
    """
    n, _, h, w = grad_out.shape
    acc = accumulation_dtype(grad_out.dtype)
    grad = grad_out.to(acc)
    # Accumulated straight into out where it has the accumulation dtype (float32, float64).
    grad_feat = out if out is not None and out.dtype == acc else torch.empty_like(grad)
    rows, columns, exists = block_cells(blocks, h, w, block_size)
    samples = torch.arange(n, device=grad.device)[:, None]
    taken = grad[samples, :, rows, columns]  # (N, cells, C)
    if grad_feat.stride(1) != 1:
        # Channels outside the cells (NCHW): one masked pass, the mask read once per plane.
        torch.where(mask[:, None], grad.new_zeros(()), grad, out=grad_feat)
    else:
        # Channels innermost (tokens, channels_last), where a mask broadcast along them costs
        # 2.5 copies on CPU: one copy, then only the selected cells rewritten (the mask holds
        # no cell outside them: the forward made it from them).
        grad_feat.copy_(grad)
        given_away = mask[samples, rows, columns][..., None]
        grad_feat[samples, :, rows, columns] = taken.masked_fill(given_away, 0)
    # Adding -0.0 leaves every value, -0.0 included, exactly as it was: the padding cells and the
    # unmixed samples contribute nothing without a data-dependent (host-syncing) filter.
    contributes = exists & (partners >= 0)[:, None]
    taken.masked_fill_(~contributes[..., None], -0.0)
    cells, index = _cell_rows(grad_feat, partners.clamp_min(0)[:, None], rows, columns)
    # index_add_ on CPU adds in index order: each cell's gradients in ascending sample order.
    cells.index_add_(0, index, taken.flatten(0, 1))
    if grad_feat is out:
        return out
    return grad_feat.to(grad_out.dtype) if out is None else out.copy_(grad_feat)


def _cell_rows(
    x: torch.Tensor, samples: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The cells of an (N, C, H, W) map as rows of a 2-D view of its storage (a row's elements
    are the cell's C channels), and the flat row index of the cells ``(samples[i], rows[i, k],
    columns[i, k])`` in (i, k) order.

    Any strides whose elements do not overlap (NCHW, channels_last, the patches of tokens): a
    row starts every ``gcd`` of the cell strides, so every cell starts on one. Rows that are
    not cells may overlap cells (NCHW, a row per element): write only the cells' rows.
    """
    channels = x.shape[1]
    s_n, s_c, s_h, s_w = x.stride()
    unit = math.gcd(s_n, s_h, s_w) or 1  # all three 0 only for a single cell
    extent = sum((size - 1) * stride for size, stride in zip(x.shape, x.stride(), strict=True))
    last_cell = extent - (channels - 1) * s_c
    view = x.as_strided((last_cell // unit + 1, channels), (unit, s_c), x.storage_offset())
    return view, ((samples * s_n + rows * s_h + columns * s_w) // unit).flatten()


def zeroed_backward_torch(
    grad_out: torch.Tensor, mask: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Gradient w.r.t. ``feat`` of the zeroing modes: ``grad_out`` where kept, 0 where zeroed;
    into ``out`` when given."""
    if out is None:
        out = torch.empty_like(grad_out, memory_format=torch.preserve_format)
    return torch.where(mask[:, None], grad_out.new_zeros(()), grad_out, out=out)
