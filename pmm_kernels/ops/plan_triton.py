"""The Triton planning kernels of the feature-mix family: where each sample's cells come from.

:func:`launch_plan` is the first half of every forward (:mod:`pmm_kernels.ops.feature_mix_triton`
is the second, the copy): with channel weights, :func:`_saliency_copy_kernel` copies ``feat`` to
``out`` while it reduces ``sum_c w[n, c] * feat[n, c, p]`` over its channel tile into float32
partial sums; :func:`_plan_kernel`, one program per sample, adds the partials in a fixed order (or
reads a map, random keys or a corner), scores the blocks, picks the top k, draws the partner and
writes ``partners``, ``blocks``, ``mask`` and ``lam``. Nothing is read back to the host.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pmm_kernels.ops.plan import CellSource, MixPlan
from pmm_kernels.ops.utils import block_grid

__all__ = ["launch_plan"]

# The saliency reduction's tile (BLOCK_C, BLOCK_HW, num_warps) is fixed: its float32 partial
# sums, hence the chosen blocks, must not depend on an autotuning outcome.
_SALIENCY_TILE = (32, 64, 4)
_LABEL_CHUNK = 256
# The planning kernel's SOURCE (where the cells come from: channel weights' partial saliency
# sums, a map, keys or a corner) and RULE (how partners are found).
_SOURCES = {"weights": 0, "map": 1, "keys": 2, "corner": 3}
_RULE_GIVEN = 0
_PARTNER_RULES = {"different_label": 1, "any_other": 2, "none": 3}


@triton.jit
def _saliency_copy_kernel(
    feat_ptr,
    out_ptr,
    weights_ptr,
    partial_ptr,
    C,
    HW,
    f_sn,
    f_sc,
    f_sp,
    o_sn,
    o_sc,
    o_sp,
    w_sn,
    w_sc,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    """out[n, c, p] = feat[n, c, p];  partial[n, cb, p] = sum_{c in tile cb} w[n, c] feat[n, c, p].

    Grid (N, ceil(C / BLOCK_C), ceil(HW / BLOCK_HW)); partials are float32 and summed later in a
    fixed order, so the saliency is deterministic without atomics.
    """
    n = tl.program_id(0).to(tl.int64)
    c_block = tl.program_id(1)
    c = c_block * BLOCK_C + tl.arange(0, BLOCK_C)
    p = tl.program_id(2) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    in_map = p < HW
    tile = (c < C)[:, None] & in_map[None, :]
    x = tl.load(feat_ptr + n * f_sn + c[:, None] * f_sc + p[None, :] * f_sp, mask=tile, other=0.0)
    tl.store(out_ptr + n * o_sn + c[:, None] * o_sc + p[None, :] * o_sp, x, mask=tile)
    weight = tl.load(weights_ptr + n * w_sn + c * w_sc, mask=c < C, other=0.0).to(tl.float32)
    partial = tl.sum(x.to(tl.float32) * weight[:, None], axis=0)
    num_c_blocks = tl.num_programs(1)
    tl.store(partial_ptr + (n * num_c_blocks + c_block) * HW + p, partial, mask=in_map)


@triton.jit
def _plan_kernel(
    source_ptr,
    corner_ptr,
    labels_ptr,
    u_ptr,
    given_partners_ptr,
    partners_ptr,
    blocks_ptr,
    mask_ptr,
    lam_ptr,
    N,
    H,
    W,
    HW,
    MAP_AREA,
    COLS,
    NUM_GRID_BLOCKS,
    K,
    NUM_C_BLOCKS,
    s_sn,
    s_sp,
    BH: tl.constexpr,
    BW: tl.constexpr,
    SOURCE: tl.constexpr,
    RULE: tl.constexpr,
    ZERO_UNPAIRED: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """One program per sample i: selected cells, partner, mask and lam.

    Cells (SOURCE): 0, 1 -- the k best blocks by score[b] = sum_{p in block b} s[p], with
    s = ReLU(sum_cb partial[i, cb, p]) (NaN kept) or the given map; 2 -- the k blocks with the
    largest keys[i, b]; either way taken greedily, ties to the lower index, non-finite values
    below all finite ones. 3 -- the rectangle [top, top + BH) x [left, left + BW) (clipped), and
    blocks[i, 0] = -1.
    Partner (RULE): 0 -- given; 1 -- the r-th j with labels[j] != labels[i] (ascending j),
    r = min(floor(u[i] * m), m - 1), m = number of such j, -1 when m = 0; 2 -- the r-th j != i,
    m = N - 1 (-1 when N = 1); 3 -- -1.
    mask = selected & (partner >= 0), or with ZERO_UNPAIRED (rule "none") selected: the cells
    of a sample without a partner are zeroed;
    lam = sum(mask) / HW, correctly rounded.
    """
    i = tl.program_id(0).to(tl.int64)
    p = tl.arange(0, BLOCK_P)
    if SOURCE == 3:
        top = tl.load(corner_ptr)
        left = tl.load(corner_ptr + 1)
        row = p // W
        col = p % W
        selected = (row >= top) & (row < top + BH) & (col >= left) & (col < left + BW)
        tl.store(blocks_ptr + i, -1)
    else:
        b = tl.arange(0, BLOCK_B)
        if SOURCE == 2:
            scores = tl.load(source_ptr + i * s_sn + b * s_sp, mask=b < NUM_GRID_BLOCKS, other=0.0)
        else:
            # Block scores over a (block, cell-in-block) tile; cells past the map's edge read 0.
            q = tl.arange(0, BLOCK_Q)
            rows = (b // COLS)[:, None] * BH + (q // BW)[None, :]
            cols = (b % COLS)[:, None] * BW + (q % BW)[None, :]
            in_block = (
                (b < NUM_GRID_BLOCKS)[:, None] & (q < BH * BW)[None, :] & (rows < H) & (cols < W)
            )
            if SOURCE == 0:
                s = tl.zeros((BLOCK_B, BLOCK_Q), dtype=tl.float32)
                for cb in range(NUM_C_BLOCKS):
                    s += tl.load(
                        source_ptr + (i * NUM_C_BLOCKS + cb) * HW + rows * W + cols,
                        mask=in_block,
                        other=0.0,
                    )
                s = tl.where(s < 0.0, 0.0, s)
            else:
                s = tl.load(
                    source_ptr + i * s_sn + (rows * W + cols).to(tl.int64) * s_sp,
                    mask=in_block,
                    other=0.0,
                ).to(tl.float32)
            scores = tl.sum(s, axis=1)

        finite = (scores == scores) & (tl.abs(scores) < float("inf"))
        keys = tl.where(finite, scores, float("-inf"))
        taken = b >= NUM_GRID_BLOCKS
        cell_block = (p // W) // BH * COLS + (p % W) // BW
        selected = p < 0
        for t in range(K):
            best = tl.max(tl.where(taken, float("-inf"), keys), axis=0)
            pick = tl.min(tl.where(~taken & (keys == best), b, BLOCK_B), axis=0)
            tl.store(blocks_ptr + i * K + t, pick.to(tl.int64))
            taken = taken | (b == pick)
            selected = selected | (cell_block == pick)

    if RULE == 0:
        partner = tl.load(given_partners_ptr + i)
    elif RULE == 1:
        # Two passes over the labels in chunks, so registers don't grow with N: count the
        # candidates, then find the r-th one.
        label_i = tl.load(labels_ptr + i)
        m = 0
        for start in range(0, N, BLOCK_N):
            j = start + tl.arange(0, BLOCK_N)
            differs = (tl.load(labels_ptr + j, mask=j < N, other=0) != label_i) & (j < N)
            m += tl.sum(differs.to(tl.int32), axis=0)
        # u * m is exact in float64 and non-negative, so truncation is the floor.
        r = tl.minimum((tl.load(u_ptr + i).to(tl.float64) * m).to(tl.int32), m - 1)
        partner = tl.full([], -1, tl.int32)
        seen = 0
        for start in range(0, N, BLOCK_N):
            j = start + tl.arange(0, BLOCK_N)
            differs = (tl.load(labels_ptr + j, mask=j < N, other=0) != label_i) & (j < N)
            hit = differs & (seen + tl.cumsum(differs.to(tl.int32), axis=0) - 1 == r)
            partner = tl.maximum(partner, tl.max(tl.where(hit, j, -1), axis=0))
            seen += tl.sum(differs.to(tl.int32), axis=0)
    elif RULE == 2:
        m = N - 1
        r = tl.minimum((tl.load(u_ptr + i).to(tl.float64) * m).to(tl.int64), m - 1)
        partner = tl.where(m > 0, tl.where(r < i, r, r + 1), -1)
    else:
        partner = tl.full([], -1, tl.int64)
    tl.store(partners_ptr + i, partner.to(tl.int64))

    replaced = selected & (p < HW)
    if not ZERO_UNPAIRED:
        replaced = replaced & (partner >= 0)
    tl.store(mask_ptr + i * HW + p, replaced, mask=p < HW)
    # div_rn: a correctly rounded division (Triton's `/` may be approximate), as torch does.
    area = tl.sum(replaced.to(tl.int32), axis=0).to(tl.float32)
    tl.store(lam_ptr + i, tl.math.div_rn(area, MAP_AREA))


def launch_plan(
    feat_flat: torch.Tensor,
    out_flat: torch.Tensor,
    plan: MixPlan,
    partners: torch.Tensor,
    blocks: torch.Tensor,
    mask: torch.Tensor,
    lam: torch.Tensor,
) -> None:
    """Choose every sample's cells and partner into ``partners``, ``blocks``, ``mask`` and ``lam``.

    ``feat_flat`` and ``out_flat`` are the (N, C, H*W) views the copy kernels stream; with channel
    weights the saliency pass also copies ``feat`` to ``out`` on the way.
    """
    n, h, w = mask.shape
    hw = h * w
    bh, bw = plan.block_size
    rows, cols = block_grid(h, w, plan.block_size)
    num_blocks = blocks.shape[1]
    source, num_c_blocks = _source(feat_flat, out_flat, plan.cells)
    block_b = triton.next_power_of_2(rows * cols)
    block_q = triton.next_power_of_2(bh * bw)
    block_p = triton.next_power_of_2(hw)
    # Pointers the constexpr switches leave unread still need a tensor: pass an output.
    _plan_kernel[(n,)](
        source,
        plan.cells.values if plan.cells.kind == "corner" else lam,
        plan.labels,
        lam if plan.u is None else plan.u,
        partners if plan.given_partners is None else plan.given_partners,
        partners,
        blocks,
        mask,
        lam,
        n,
        h,
        w,
        hw,
        float(hw),
        cols,
        rows * cols,
        num_blocks,
        num_c_blocks,
        *(source.stride() if plan.cells.kind in ("keys", "map") else (0, 0)),
        BH=bh,
        BW=bw,
        SOURCE=_SOURCES[plan.cells.kind],
        RULE=_RULE_GIVEN if plan.given_partners is not None else _PARTNER_RULES[plan.partner_rule],
        ZERO_UNPAIRED=not plan.from_partner,
        BLOCK_N=min(triton.next_power_of_2(n), _LABEL_CHUNK),
        BLOCK_B=block_b,
        BLOCK_Q=block_q,
        BLOCK_P=block_p,
        num_warps=min(16, max(4, max(block_b * block_q, block_p) // 256)),
    )


def _source(
    feat_flat: torch.Tensor, out_flat: torch.Tensor, cells: CellSource
) -> tuple[torch.Tensor, int]:
    """What the planning kernel reads for ``cells``, and its number of channel tiles.

    Channel weights first run the saliency pass, which copies ``feat`` to ``out`` and leaves
    per-channel-tile partial sums; a map is read flat; keys and a corner as they are.
    """
    if cells.kind == "map":
        return cells.values.flatten(1), 1
    if cells.kind != "weights":
        return cells.values, 1
    n, c, hw = feat_flat.shape
    block_c, block_hw, num_warps = _SALIENCY_TILE
    num_c_blocks = triton.cdiv(c, block_c)
    partials = torch.empty(n, num_c_blocks, hw, dtype=torch.float32, device=feat_flat.device)
    _saliency_copy_kernel[(n, num_c_blocks, triton.cdiv(hw, block_hw))](
        feat_flat,
        out_flat,
        cells.values,
        partials,
        c,
        hw,
        *feat_flat.stride(),
        *out_flat.stride(),
        *cells.values.stride(),
        BLOCK_C=block_c,
        BLOCK_HW=block_hw,
        num_warps=num_warps,
    )
    return partials, num_c_blocks
