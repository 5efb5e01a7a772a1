"""Triton kernels of A-Hard-Mix and their launchers.

Forward, for N samples of a (C, H, W) map with block size (bh, bw), k blocks and B = bytes(feat):

* channel weights ``w`` (N, C): :func:`_saliency_copy_kernel` copies ``feat`` to ``out`` while it
  reduces ``sum_c w[n, c] * feat[n, c, p]`` over its channel tile into a float32 partial sum;
  :func:`_plan_kernel` adds the partials, chooses blocks and partners; :func:`_mix_kernel` then
  rewrites only the masked cells from the partner. Bytes: B read + B written + 2 * B * k*bh*bw / HW
  for the patch (2.19 B at the paper shape, plus 4 * N * HW * ceil(C / BLOCK_C) for the partials).
* saliency map (N, H, W): :func:`_plan_kernel` reads the map, then one :func:`_mix_kernel` pass
  reads every output element once, from the sample or its partner, and writes it once: 2.0 B.

Backward: :func:`_a_hard_mix_bwd_kernel` gathers, for every cell of sample i, its own gradient where
it was kept plus the gradients of the samples that took it from i, in ascending sample order, in
float32: B read + B written, no atomics, bit-reproducible.

All offsets are int64, every load and store takes the tensors' own strides (channels_last and
other layouts need no copy), and nothing is read back to the host.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pmm_kernels.ops.reference import block_grid

# Fixed tiles: the kernels are bandwidth-bound, and the Triton interpreter wants one config.
_BLOCK_C = 32
_MAX_BLOCK_HW = 256
_MAX_MAP_CELLS = 16384
_MAX_BLOCKS = 16384
_MAX_BATCH = 16384


def unsupported_reason(n: int, h: int, w: int, num_grid_blocks: int) -> str | None:
    """Why the kernels can't take this shape, or None.

    The planning kernel holds one sample's map, its blocks and the batch's labels in registers.
    """
    if h * w <= _MAX_MAP_CELLS and num_grid_blocks <= _MAX_BLOCKS and n <= _MAX_BATCH:
        return None
    return (
        f"backend='triton' supports H*W <= {_MAX_MAP_CELLS}, at most {_MAX_BLOCKS} blocks and "
        f"N <= {_MAX_BATCH}; got N={n}, H*W={h * w}, {num_grid_blocks} blocks. "
        "Use backend='torch' for larger maps."
    )


@triton.jit
def _saliency_copy_kernel(
    feat_ptr, out_ptr, weights_ptr, partial_ptr,
    C, HW,
    f_sn, f_sc, f_sp,
    o_sn, o_sc, o_sp,
    w_sn, w_sc,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    """out[n, c, p] = feat[n, c, p];  partial[n, cb, p] = sum_{c in tile cb} w[n, c] feat[n, c, p].

    Grid (N, ceil(C / BLOCK_C), ceil(HW / BLOCK_HW)); partials are float32 and summed later in a
    fixed order, so the saliency is deterministic without atomics.
    """
    n = tl.program_id(0).to(tl.int64)
    c_block = tl.program_id(1)
    c = (c_block * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    p = (tl.program_id(2) * BLOCK_HW + tl.arange(0, BLOCK_HW)).to(tl.int64)
    in_map = p < HW
    tile = (c < C)[:, None] & in_map[None, :]
    x = tl.load(
        feat_ptr + n * f_sn + c[:, None] * f_sc + p[None, :] * f_sp, mask=tile, other=0.0
    )
    tl.store(out_ptr + n * o_sn + c[:, None] * o_sc + p[None, :] * o_sp, x, mask=tile)
    weight = tl.load(weights_ptr + n * w_sn + c * w_sc, mask=c < C, other=0.0).to(tl.float32)
    partial = tl.sum(x.to(tl.float32) * weight[:, None], axis=0)
    num_c_blocks = tl.num_programs(1)
    tl.store(partial_ptr + (n * num_c_blocks + c_block) * HW + p, partial, mask=in_map)


@triton.jit
def _plan_kernel(
    source_ptr, labels_ptr, u_ptr, negatives_in_ptr,
    negatives_ptr, blocks_ptr, mask_ptr, lam_ptr,
    N, H, W, HW, MAP_AREA, COLS, NUM_GRID_BLOCKS, K, NUM_C_BLOCKS,
    s_sn, s_sp,
    BH: tl.constexpr, BW: tl.constexpr,
    FROM_PARTIALS: tl.constexpr, HAS_NEGATIVES: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """One program per sample i: block scores, top-k blocks, partner, mask and lam.

    score[b] = sum_{p in block b} s[p], with s = ReLU(sum_cb partial[i, cb, p]) (NaN kept) or the
    given map. Blocks are taken greedily: highest score, ties to the lower index, non-finite
    scores below all finite ones. Partner: the r-th j with labels[j] != labels[i] (ascending j),
    r = min(floor(u[i] * m), m - 1), m = number of such j; -1 when m = 0.
    """
    i = tl.program_id(0).to(tl.int64)

    # Block scores over a (block, cell-in-block) tile; cells past the map's edge read as zero.
    b = tl.arange(0, BLOCK_B)
    q = tl.arange(0, BLOCK_Q)
    rows = (b // COLS)[:, None] * BH + (q // BW)[None, :]
    cols = (b % COLS)[:, None] * BW + (q % BW)[None, :]
    in_block = (b < NUM_GRID_BLOCKS)[:, None] & (q < BH * BW)[None, :] & (rows < H) & (cols < W)
    if FROM_PARTIALS:
        s = tl.zeros((BLOCK_B, BLOCK_Q), dtype=tl.float32)
        for cb in range(NUM_C_BLOCKS):
            s += tl.load(
                source_ptr + (i * NUM_C_BLOCKS + cb) * HW + rows * W + cols,
                mask=in_block, other=0.0,
            )
        s = tl.where(s < 0.0, 0.0, s)
    else:
        s = tl.load(
            source_ptr + i * s_sn + (rows * W + cols).to(tl.int64) * s_sp,
            mask=in_block, other=0.0,
        ).to(tl.float32)
    scores = tl.sum(s, axis=1)

    finite = (scores == scores) & (tl.abs(scores) < float("inf"))
    keys = tl.where(finite, scores, float("-inf"))
    taken = b >= NUM_GRID_BLOCKS
    p = tl.arange(0, BLOCK_P)
    cell_block = (p // W) // BH * COLS + (p % W) // BW
    selected = p < 0
    for t in range(K):
        best = tl.max(tl.where(taken, float("-inf"), keys), axis=0)
        pick = tl.min(tl.where(~taken & (keys == best), b, BLOCK_B), axis=0)
        tl.store(blocks_ptr + i * K + t, pick.to(tl.int64))
        taken = taken | (b == pick)
        selected = selected | (cell_block == pick)

    if HAS_NEGATIVES:
        partner = tl.load(negatives_in_ptr + i)
    else:
        j = tl.arange(0, BLOCK_N)
        label_i = tl.load(labels_ptr + i)
        differs = (tl.load(labels_ptr + j, mask=j < N, other=0) != label_i) & (j < N)
        m = tl.sum(differs.to(tl.int32), axis=0)
        # u * m is exact in float64 and non-negative, so truncation is the floor.
        r = tl.minimum((tl.load(u_ptr + i).to(tl.float64) * m).to(tl.int32), m - 1)
        hit = differs & (tl.cumsum(differs.to(tl.int32), axis=0) - 1 == r)
        partner = tl.where(m > 0, tl.min(tl.where(hit, j, BLOCK_N), axis=0), -1)
    tl.store(negatives_ptr + i, partner.to(tl.int64))

    replaced = selected & (p < HW) & (partner >= 0)
    tl.store(mask_ptr + i * HW + p, replaced, mask=p < HW)
    # div_rn: a correctly rounded division (Triton's `/` may be approximate), as torch does.
    area = tl.sum(replaced.to(tl.int32), axis=0).to(tl.float32)
    tl.store(lam_ptr + i, tl.math.div_rn(area, MAP_AREA))


@triton.jit
def _mix_kernel(
    feat_ptr, out_ptr, negatives_ptr, mask_ptr,
    C, HW,
    f_sn, f_sc, f_sp,
    o_sn, o_sc, o_sp,
    PATCH_ONLY: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    """out[i, c, p] = feat[negatives[i], c, p] if mask[i, p] else feat[i, c, p].

    With PATCH_ONLY, ``out`` already holds ``feat`` and only the masked cells are read and written.
    Values are copied, never computed on, so the output is bit-exact in every dtype.
    """
    i = tl.program_id(0).to(tl.int64)
    c = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    p = (tl.program_id(2) * BLOCK_HW + tl.arange(0, BLOCK_HW)).to(tl.int64)
    in_map = p < HW
    replaced = tl.load(mask_ptr + i * HW + p, mask=in_map, other=0).to(tl.int1)
    partner = tl.load(negatives_ptr + i)
    source = tl.where(replaced, partner, i)
    tile = (c < C)[:, None] & in_map[None, :]
    if PATCH_ONLY:
        tile = tile & replaced[None, :]
    x = tl.load(feat_ptr + source[None, :] * f_sn + c[:, None] * f_sc + p[None, :] * f_sp,
                mask=tile)
    tl.store(out_ptr + i * o_sn + c[:, None] * o_sc + p[None, :] * o_sp, x, mask=tile)


@triton.jit
def _a_hard_mix_bwd_kernel(
    grad_out_ptr, grad_feat_ptr, mask_ptr, order_ptr, bucket_end_ptr,
    C, HW,
    g_sn, g_sc, g_sp,
    d_sn, d_sc, d_sp,
    ROUND_TO_BF16: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    """grad_feat[i] = grad_out[i] * (1 - mask[i]) + sum_{j: partner_j = i} grad_out[j] * mask[j].

    The takers j of sample i are ``order[bucket_end[i]:bucket_end[i + 1]]`` (ascending j), and
    they are added one after another in float32: a fixed order, so the result is reproducible.
    """
    i = tl.program_id(0).to(tl.int64)
    c = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    p = (tl.program_id(2) * BLOCK_HW + tl.arange(0, BLOCK_HW)).to(tl.int64)
    in_map = p < HW
    tile = (c < C)[:, None] & in_map[None, :]
    offsets = c[:, None] * g_sc + p[None, :] * g_sp

    replaced = tl.load(mask_ptr + i * HW + p, mask=in_map, other=0).to(tl.int1)
    acc = tl.load(
        grad_out_ptr + i * g_sn + offsets, mask=tile & ~replaced[None, :], other=0.0
    ).to(tl.float32)
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


def _launch_grid(n: int, c: int, hw: int) -> tuple[tuple[int, int, int], int]:
    """Grid (sample, channel tile, cell tile) of the streaming kernels and their cell tile."""
    block_hw = min(triton.next_power_of_2(hw), _MAX_BLOCK_HW)
    return (n, triton.cdiv(c, _BLOCK_C), triton.cdiv(hw, block_hw)), block_hw


def _copy_back_if_flatten_copied(result: torch.Tensor, result_flat: torch.Tensor) -> None:
    """Write the kernel's output back where ``flatten(2)`` had to copy instead of view.

    Outputs keep the input's layout; only a layout that can't merge H and W (say, a transposed
    map) makes the flat view a copy, at the price of one more pass.
    """
    if result_flat.data_ptr() != result.data_ptr():
        result.copy_(result_flat.view(result.shape))


def a_hard_mix_forward_triton(
    feat: torch.Tensor,
    attn: torch.Tensor,
    labels: torch.Tensor,
    u: torch.Tensor | None,
    negatives: torch.Tensor | None,
    block_size: tuple[int, int],
    num_blocks: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the forward kernels; same contract as ``a_hard_mix_forward_torch``."""
    n, c, h, w = feat.shape
    hw = h * w
    bh, bw = block_size
    rows, cols = block_grid(h, w, block_size)
    grid, block_hw = _launch_grid(n, c, hw)
    device = feat.device

    out = torch.empty_like(feat, memory_format=torch.preserve_format)
    partners = torch.empty(n, dtype=torch.int64, device=device)
    blocks = torch.empty(n, num_blocks, dtype=torch.int64, device=device)
    mask = torch.empty(n, h, w, dtype=torch.bool, device=device)
    lam = torch.empty(n, dtype=torch.float32, device=device)
    # The kernels walk cells as one flat index p = h * W + w: a view for contiguous and
    # channels_last maps, a copy only where H and W can't merge (e.g. a transposed map).
    feat_flat, out_flat = feat.flatten(2), out.flatten(2)

    from_partials = attn.dim() == 2
    if from_partials:
        source = torch.empty(n, grid[1], hw, dtype=torch.float32, device=device)
        _saliency_copy_kernel[grid](
            feat_flat, out_flat, attn, source, c, hw,
            *feat_flat.stride(), *out_flat.stride(), *attn.stride(),
            BLOCK_C=_BLOCK_C, BLOCK_HW=block_hw,
        )
        source_strides = (0, 0)
    else:
        source = attn.flatten(1)
        source_strides = source.stride()
    _plan_kernel[(n,)](
        # Pointers the constexpr flags leave unread still need a tensor: pass an output.
        source, labels, lam if u is None else u, partners if negatives is None else negatives,
        partners, blocks, mask, lam,
        n, h, w, hw, float(hw), cols, rows * cols, num_blocks, grid[1], *source_strides,
        BH=bh, BW=bw, FROM_PARTIALS=from_partials, HAS_NEGATIVES=negatives is not None,
        BLOCK_N=triton.next_power_of_2(n), BLOCK_B=triton.next_power_of_2(rows * cols),
        BLOCK_Q=triton.next_power_of_2(bh * bw), BLOCK_P=triton.next_power_of_2(hw),
    )
    _mix_kernel[grid](
        feat_flat, out_flat, partners, mask, c, hw, *feat_flat.stride(), *out_flat.stride(),
        PATCH_ONLY=from_partials, BLOCK_C=_BLOCK_C, BLOCK_HW=block_hw,
    )
    _copy_back_if_flatten_copied(out, out_flat)
    return out, partners, blocks, mask, lam


def a_hard_mix_backward_triton(
    grad_out: torch.Tensor, negatives: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Launch the backward kernel; same result as ``a_hard_mix_backward_torch``, bit for bit."""
    n, c, h, w = grad_out.shape
    hw = h * w
    grid, block_hw = _launch_grid(n, c, hw)
    # Takers grouped by the sample they took from, ascending within a group (stable sort); the
    # group of sample i ends at bucket_end[i + 1], the unmixed samples (-1) come first.
    order = torch.sort(negatives, stable=True).indices
    counts = torch.zeros(n + 1, dtype=torch.int64, device=grad_out.device)
    counts.scatter_add_(0, negatives + 1, torch.ones_like(negatives))
    bucket_end = counts.cumsum(0)

    grad_feat = torch.empty_like(grad_out, memory_format=torch.preserve_format)
    grad_out_flat, grad_feat_flat = grad_out.flatten(2), grad_feat.flatten(2)
    round_to_bf16 = grad_out.dtype == torch.bfloat16
    _a_hard_mix_bwd_kernel[grid](
        grad_out_flat, grad_feat_flat.view(torch.int16) if round_to_bf16 else grad_feat_flat,
        mask, order, bucket_end, c, hw, *grad_out_flat.stride(), *grad_feat_flat.stride(),
        ROUND_TO_BF16=round_to_bf16, BLOCK_C=_BLOCK_C, BLOCK_HW=block_hw,
    )
    _copy_back_if_flatten_copied(grad_feat, grad_feat_flat)
    return grad_feat
