"""Triton kernels of the feature-mix family (A-Hard-Mix, CutMix, CutOut, Batch DropBlock, ...).

Every mode is "choose cells, then take those cells from a partner or zero them"
(docs/op.md#feature-mix-family), so one planning kernel decides
(:mod:`pmm_kernels.ops.plan_triton`) and one of two copy kernels, here, moves the data. N
samples of a (C, H, W) map, B = bytes(feat), f = the replaced fraction of the map (k*bh*bw / HW
at most):

* channel weights ``w`` (N, C): the planning module's saliency pass copies ``feat`` to ``out``
  while it reduces ``sum_c w[n, c] * feat[n, c, p]`` over its channel tile into a float32 partial
  sum; its planning kernel adds the partials, chooses blocks and partners; :func:`_patch_kernel`
  then rewrites only the selected blocks, one program per (sample, selected block, channel tile),
  so its work is proportional to the patched area. Bytes: 2 B + 2 f B (2.19 B at the paper
  shape), plus 4 * N * HW * ceil(C / 32) for the partials.
* saliency map (N, H, W), random block keys or a rectangle: the planning kernel reads the map
  (or keys), then one :func:`_mix_kernel` pass reads the sample's own tile at full width, the
  partner only at replaced cells, selects in registers and stores at full width: (2 + f) B.

Backward: :func:`_feature_mix_bwd_kernel` reads the own gradient at full width, zeroes the
replaced cells in registers, then adds the gradients of the samples that took cells from i, read
only at their cells, in ascending sample order, in float32: (2 + f) B, no atomics, bit-reproducible.

How launches are tiled and why rows must be 16-byte aligned: :mod:`pmm_kernels.ops.triton_launch`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pmm_kernels.ops.plan import MixPlan
from pmm_kernels.ops.plan_triton import launch_plan
from pmm_kernels.ops.triton_launch import (
    check_sample_span,
    copy_back_if_flatten_copied,
    stream_configs,
    stream_grid,
    tiles_for_layout,
    tuning_bench,
)
from pmm_kernels.ops.utils import block_grid

_PATCH_TILE = 2048


@triton.autotune(
    configs=stream_configs(),
    key=["C", "HW", "f_sn", "f_sc", "f_sp"],
    do_bench=tuning_bench,
    prune_configs_by={"early_config_prune": tiles_for_layout},
)
@triton.jit
def _mix_kernel(
    feat_ptr,
    out_ptr,
    partners_ptr,
    mask_ptr,
    C,
    HW,
    f_sn,
    f_sc,
    f_sp,
    o_sn,
    o_sc,
    o_sp,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    """out[i, c, p] = mask[i, p] ? (j >= 0 ? feat[j, c, p] : 0) : feat[i, c, p], j = partners[i].

    The own tile is read and the output written at full width (masked on the tile bounds only,
    so both vectorise); the partner is read only at replaced cells and the choice is made in
    registers. Values are copied, never computed on, so the output is bit-exact in every dtype.
    """
    i = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    p = tl.program_id(2) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    in_map = p < HW
    tile = (c < C)[:, None] & in_map[None, :]
    offsets = c[:, None] * f_sc + p[None, :] * f_sp
    own = tl.load(feat_ptr + i * f_sn + offsets, mask=tile)
    replaced = tl.load(mask_ptr + i * HW + p, mask=in_map, other=0).to(tl.int1)[None, :]
    partner = tl.load(partners_ptr + i)
    theirs = tl.load(
        feat_ptr + tl.maximum(partner, 0) * f_sn + offsets,
        mask=tile & replaced & (partner >= 0),
        other=0.0,
    )
    tl.store(
        out_ptr + i * o_sn + c[:, None] * o_sc + p[None, :] * o_sp,
        tl.where(replaced, theirs, own),
        mask=tile,
    )


@triton.jit
def _patch_kernel(
    feat_ptr,
    out_ptr,
    partners_ptr,
    blocks_ptr,
    mask_ptr,
    C,
    H,
    W,
    HW,
    COLS,
    K,
    f_sn,
    f_sc,
    f_sp,
    o_sn,
    o_sc,
    o_sp,
    BH: tl.constexpr,
    BW: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_Q: tl.constexpr,
):
    """Rewrite one selected block of one sample: out[i, c, p] = (j >= 0 ? feat[j, c, p] : 0)
    for the cells p of block blocks[i, t] where mask[i, p], j = partners[i].

    Grid (N, K, ceil(C / BLOCK_C)): the work is proportional to the patched area, not to the map.
    ``out`` already holds ``feat`` everywhere else.
    """
    i = tl.program_id(0).to(tl.int64)
    block = tl.load(blocks_ptr + i * K + tl.program_id(1))
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    partner = tl.load(partners_ptr + i)
    top = block // COLS * BH
    left = block % COLS * BW
    for start in range(0, BH * BW, BLOCK_Q):
        q = start + tl.arange(0, BLOCK_Q)
        row = top + q // BW
        col = left + q % BW
        in_block = (q < BH * BW) & (row < H) & (col < W)
        p = tl.where(in_block, row * W + col, 0)
        replaced = tl.load(mask_ptr + i * HW + p, mask=in_block, other=0).to(tl.int1)
        tile = (c < C)[:, None] & replaced[None, :]
        x = tl.load(
            feat_ptr + tl.maximum(partner, 0) * f_sn + c[:, None] * f_sc + p[None, :] * f_sp,
            mask=tile & (partner >= 0),
            other=0.0,
        )
        tl.store(out_ptr + i * o_sn + c[:, None] * o_sc + p[None, :] * o_sp, x, mask=tile)


@triton.autotune(
    configs=stream_configs(),
    key=["C", "HW", "g_sn", "g_sc", "g_sp"],
    do_bench=tuning_bench,
    prune_configs_by={"early_config_prune": tiles_for_layout},
)
@triton.jit
def _feature_mix_bwd_kernel(
    grad_out_ptr,
    grad_feat_ptr,
    mask_ptr,
    order_ptr,
    bucket_end_ptr,
    C,
    HW,
    g_sn,
    g_sc,
    g_sp,
    d_sn,
    d_sc,
    d_sp,
    ROUND_TO_BF16: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    """grad_feat[i] = grad_out[i] * (1 - mask[i]) + sum_{j: partner_j = i} grad_out[j] * mask[j].

    The own gradient is read at full width and the replaced cells zeroed in registers; the takers
    j of sample i are ``order[bucket_end[i]:bucket_end[i + 1]]`` (ascending j), read only at their
    cells and added one after another in float32: a fixed order, so the result is reproducible.
    """
    i = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    p = tl.program_id(2) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    in_map = p < HW
    tile = (c < C)[:, None] & in_map[None, :]
    offsets = c[:, None] * g_sc + p[None, :] * g_sp

    replaced = tl.load(mask_ptr + i * HW + p, mask=in_map, other=0).to(tl.int1)[None, :]
    own = tl.load(grad_out_ptr + i * g_sn + offsets, mask=tile, other=0.0).to(tl.float32)
    acc = tl.where(replaced, 0.0, own)
    for t in range(tl.load(bucket_end_ptr + i), tl.load(bucket_end_ptr + i + 1)):
        j = tl.load(order_ptr + t)
        taken = tl.load(mask_ptr + j * HW + p, mask=in_map, other=0).to(tl.int1)[None, :]
        g = tl.load(grad_out_ptr + j * g_sn + offsets, mask=tile & taken, other=0.0)
        acc = tl.where(taken, acc + g.to(tl.float32), acc)
    if ROUND_TO_BF16:
        # float32 -> bfloat16 round-to-nearest-even on the bits, written through an int16 view:
        # the same rounding as the hardware's, and exact under the interpreter too.
        bits = acc.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        result = tl.where(acc != acc, (bits >> 16) | 0x40, rounded).to(tl.int16)
    else:
        result = acc.to(grad_feat_ptr.dtype.element_ty)
    tl.store(grad_feat_ptr + i * d_sn + c[:, None] * d_sc + p[None, :] * d_sp, result, mask=tile)


def chosen_configs() -> dict[str, str]:
    """The tile each autotuned kernel last ran with (for benchmark records), by kernel name."""
    return {
        kernel.base_fn.__name__: str(kernel.best_config)
        for kernel in (_mix_kernel, _feature_mix_bwd_kernel)
        if getattr(kernel, "best_config", None) is not None
    }


def feature_mix_forward_triton(
    feat: torch.Tensor, plan: MixPlan, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the forward kernels of any feature-mix mode (docs/op.md#feature-mix-family).

    Args:
        feat: (N, C, H, W) float32/float16/bfloat16 map, any strides.
        plan: the validated mix (:class:`~pmm_kernels.ops.plan.MixPlan`), tensors on feat's
            device; with ``"keys"`` cells the keys are float32.
        out: where to write the mixed map (feat's shape and dtype, any strides, not overlapping
            feat: the patch view of the output tokens); None allocates it in feat's format.

    Returns:
        ``out`` (feat's dtype and memory format), ``partners`` (N,) int64, ``blocks`` (N, k)
        int64 ((N, 1) of -1 with a ``"corner"``), ``mask`` (N, H, W) bool and ``lam`` (N,)
        float32.

    Example (needs a CUDA device, so the doctest run skips it):
        >>> feat = torch.randn(4, 8, 6, 4, device="cuda")  # doctest: +SKIP
        >>> keys = CellSource("keys", torch.rand(4, 12, device="cuda"))  # doctest: +SKIP
        >>> labels = torch.arange(4, device="cuda")  # doctest: +SKIP
        >>> cutout = MixPlan(keys, labels, None, None, (2, 2), 3, "none")  # doctest: +SKIP
        >>> out, *info = feature_mix_forward_triton(feat, cutout)  # doctest: +SKIP
    """
    check_sample_span("feat", feat)
    n, c, h, w = feat.shape
    hw = h * w
    bh, bw = plan.block_size
    _, cols = block_grid(h, w, plan.block_size)
    num_blocks = 1 if plan.cells.kind == "corner" else plan.num_blocks
    device = feat.device

    if out is None:
        out = torch.empty_like(feat, memory_format=torch.preserve_format)
    partners = torch.empty(n, dtype=torch.int64, device=device)
    blocks = torch.empty(n, num_blocks, dtype=torch.int64, device=device)
    mask = torch.empty(n, h, w, dtype=torch.bool, device=device)
    lam = torch.empty(n, dtype=torch.float32, device=device)
    # The kernels walk cells as one flat index p = h * W + w: a view for contiguous and
    # channels_last maps, a copy only where H and W can't merge (e.g. a transposed map).
    feat_flat, out_flat = feat.flatten(2), out.flatten(2)

    launch_plan(feat_flat, out_flat, plan, partners, blocks, mask, lam)
    if plan.cells.kind == "weights":
        # The saliency pass already copied feat to out: rewrite only the selected blocks.
        patch_q = min(triton.next_power_of_2(bh * bw), _PATCH_TILE // 16)
        patch_c = min(triton.next_power_of_2(c), _PATCH_TILE // patch_q)
        _patch_kernel[(n, num_blocks, triton.cdiv(c, patch_c))](
            feat_flat,
            out_flat,
            partners,
            blocks,
            mask,
            c,
            h,
            w,
            hw,
            cols,
            num_blocks,
            *feat_flat.stride(),
            *out_flat.stride(),
            BH=bh,
            BW=bw,
            BLOCK_C=patch_c,
            BLOCK_Q=patch_q,
        )
    else:
        _mix_kernel[stream_grid(n, c, hw)](
            feat_flat,
            out_flat,
            partners,
            mask,
            c,
            hw,
            *feat_flat.stride(),
            *out_flat.stride(),
        )
    copy_back_if_flatten_copied(out, out_flat)
    return out, partners, blocks, mask, lam


def feature_mix_backward_triton(
    grad_out: torch.Tensor,
    partners: torch.Tensor,
    mask: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Launch the backward kernel of any feature-mix mode; bit-exact to the PyTorch path on CPU.

    Cells zeroed (mask set, partner -1) get a zero gradient; no sample takes from -1. Written
    into ``out`` when given (grad_out's shape and dtype, any strides), else a new tensor.
    """
    check_sample_span("grad_out", grad_out)
    n, c, h, w = grad_out.shape
    hw = h * w
    # Takers grouped by the sample they took from, ascending within a group (stable sort); the
    # group of sample i ends at bucket_end[i + 1], the unmixed samples (-1) come first.
    order = torch.sort(partners, stable=True).indices
    counts = torch.zeros(n + 1, dtype=torch.int64, device=grad_out.device)
    counts.scatter_add_(0, partners + 1, torch.ones_like(partners))
    bucket_end = counts.cumsum(0)

    grad_feat = (
        torch.empty_like(grad_out, memory_format=torch.preserve_format) if out is None else out
    )
    grad_out_flat, grad_feat_flat = grad_out.flatten(2), grad_feat.flatten(2)
    round_to_bf16 = grad_out.dtype == torch.bfloat16
    _feature_mix_bwd_kernel[stream_grid(n, c, hw)](
        grad_out_flat,
        grad_feat_flat.view(torch.int16) if round_to_bf16 else grad_feat_flat,
        mask,
        order,
        bucket_end,
        c,
        hw,
        *grad_out_flat.stride(),
        *grad_feat_flat.stride(),
        ROUND_TO_BF16=round_to_bf16,
    )
    copy_back_if_flatten_copied(grad_feat, grad_feat_flat)
    return grad_feat
