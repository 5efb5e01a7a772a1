"""Triton kernels of the feature-mix family (A-Hard-Mix, CutMix, CutOut, Batch DropBlock, ...).

Every mode is "choose cells, then take those cells from a partner or zero them"
(docs/op.md#feature-mix-family), so one planning kernel decides and one of two copy kernels moves
the data. N samples of a (C, H, W) map, B = bytes(feat), f = the replaced fraction of the map
(k*bh*bw / HW at most):

* channel weights ``w`` (N, C): :func:`_saliency_copy_kernel` copies ``feat`` to ``out`` while it
  reduces ``sum_c w[n, c] * feat[n, c, p]`` over its channel tile into a float32 partial sum;
  :func:`_plan_kernel` adds the partials, chooses blocks and partners; :func:`_patch_kernel` then
  rewrites only the selected blocks, one program per (sample, selected block, channel tile), so its
  work is proportional to the patched area. Bytes: 2 B + 2 f B (2.19 B at the paper shape), plus
  4 * N * HW * ceil(C / 32) for the partials.
* saliency map (N, H, W), random block keys or a rectangle: :func:`_plan_kernel` reads the map
  (or keys), then one :func:`_mix_kernel` pass reads the sample's own tile at full width, the
  partner only at replaced cells, selects in registers and stores at full width: (2 + f) B.

Backward: :func:`_feature_mix_bwd_kernel` reads the own gradient at full width, zeroes the
replaced cells in registers, then adds the gradients of the samples that took cells from i, read
only at their cells, in ascending sample order, in float32: (2 + f) B, no atomics, bit-reproducible.

Why 16-byte accesses: a streaming kernel on Ampere/Hopper reaches DRAM bandwidth only when each
thread issues wide (16-byte) loads and stores, coalesced across the warp, with several in flight.
The streaming kernels work on a 2-D (channel, cell) tile. Triton lays the tile out along the axis
whose stride is 1 (the cell axis for NCHW, the channel axis for channels_last) and vectorises when
it can prove contiguity and 16-byte alignment: the JIT specialises a stride equal to 1 as a
constant and marks integer arguments divisible by 16, and the only masks on the dense streams are
the tile bounds (``c < C``, ``p < HW``), which are constant over 16 consecutive elements when C or
HW is a multiple of 16. So NCHW maps need H*W, channels_last maps C to be a multiple of 16 (the
paper's 24x8 map with any C, or C=2048 with any map); otherwise rows may start misaligned and the
kernels stream in narrower accesses. Vectorised launches give each thread 16 elements per stream
(four 16-byte vectors in float32, two in 16-bit types), the others 8 (each element then needs its
own address): both stay within 96 registers, where more elements per thread push the backward
(float32 accumulator, taker loop) past it. ``pmm_kernels.testing.static_check`` compiles every
launch for sm_80 and sm_90 and checks exactly that. With channels_last the per-cell mask is
constant along the contiguous channel axis, so even the partner's and takers' reads are 16 bytes
wide.

The sample index and each sample's base offset are int64; offsets inside one sample are int32
(the launchers check the span), which halves the registers of unvectorised addresses. Every load
and store takes the tensors' own strides (channels_last and other layouts need no copy), and
nothing is read back to the host.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from pmm_kernels.ops.plan import CellSource, MixPlan
from pmm_kernels.ops.utils import block_grid

_MAX_MAP_CELLS = 16384
_MAX_BLOCKS = 16384
_MAX_BATCH = 16384
# Offsets inside one sample are int32 (the sample's base offset is int64): half the registers of
# int64 addresses, which the unvectorised (unaligned) layouts need one of per element.
_MAX_SAMPLE_SPAN = 2**31
# The saliency reduction's tile (BLOCK_C, BLOCK_HW, num_warps) is fixed: its float32 partial
# sums, hence the chosen blocks, must not depend on an autotuning outcome.
_SALIENCY_TILE = (32, 64, 4)
_LABEL_CHUNK = 256
_PATCH_TILE = 2048
# The planning kernel's SOURCE (where the cells come from: channel weights' partial saliency
# sums, a map, keys or a corner) and RULE (how partners are found).
_SOURCES = {"weights": 0, "map": 1, "keys": 2, "corner": 3}
_RULE_GIVEN = 0
_PARTNER_RULES = {"different_label": 1, "any_other": 2, "none": 3}


def _tuning_bench(kernel_call, quantiles):
    """Timing of one candidate tile: short runs suffice to rank three tiles."""
    return triton.testing.do_bench(kernel_call, warmup=5, rep=20, quantiles=quantiles)


def _stream_configs() -> list[triton.Config]:
    """(BLOCK_C, BLOCK_HW, num_warps) candidates of the copy kernels: 16 elements per thread for
    launches that vectorise, 8 for the others (see :func:`_tiles_for_layout`).

    Under the interpreter there is nothing to tune: one config.
    """
    tiles = [(32, 64, 4), (16, 128, 4), (64, 32, 4), (32, 32, 4), (16, 64, 4), (8, 128, 4)]
    if os.environ.get("TRITON_INTERPRET") == "1":
        tiles = tiles[:1]
    return [
        triton.Config({"BLOCK_C": block_c, "BLOCK_HW": block_hw}, num_warps=num_warps)
        for block_c, block_hw, num_warps in tiles
    ]


def streams_16_byte_aligned(sn: int, sc: int, sp: int) -> bool:
    """Whether the compiler can prove 16-byte alignment of a streamed map's dense rows.

    ``sn, sc, sp`` are the strides, in elements, of the (N, C, H*W) view the kernels stream. The
    JIT marks integer arguments divisible by 16; a stride it doesn't see as such leaves rows
    possibly misaligned, and no compiler may then use 16-byte accesses: so NCHW needs H*W and
    channels_last needs C to be a multiple of 16.
    """
    return sn % 16 == 0 and ((sp == 1 and sc % 16 == 0) or (sc == 1 and sp % 16 == 0))


def _tiles_for_layout(configs, named_args, **kwargs):
    """The candidates for this launch: 16 elements per thread where the streamed map's rows can
    be proven 16-byte aligned (a stride of 1, the others multiples of 16), else 8."""
    sn, sc, sp = [
        value for name, value in named_args.items() if name.endswith(("_sn", "_sc", "_sp"))
    ][:3]  # the streamed map's strides
    per_thread = 16 if streams_16_byte_aligned(sn, sc, sp) else 8
    return [
        config
        for config in configs
        if config.kwargs["BLOCK_C"] * config.kwargs["BLOCK_HW"]
        == per_thread * 32 * config.num_warps
    ]


def unsupported_reason(n: int, h: int, w: int, num_grid_blocks: int) -> str | None:
    """Why the kernels can't take this shape, or None.

    The planning kernel holds one sample's map and its blocks in registers.
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


@triton.autotune(
    configs=_stream_configs(),
    key=["C", "HW", "f_sn", "f_sc", "f_sp"],
    do_bench=_tuning_bench,
    prune_configs_by={"early_config_prune": _tiles_for_layout},
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
    configs=_stream_configs(),
    key=["C", "HW", "g_sn", "g_sc", "g_sp"],
    do_bench=_tuning_bench,
    prune_configs_by={"early_config_prune": _tiles_for_layout},
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


def _stream_grid(n: int, c: int, hw: int):
    """Grid (sample, channel tile, cell tile) of the autotuned streaming kernels."""
    return lambda meta: (n, triton.cdiv(c, meta["BLOCK_C"]), triton.cdiv(hw, meta["BLOCK_HW"]))


def _check_sample_span(name: str, tensor: torch.Tensor) -> None:
    """The kernels address inside one sample with int32 offsets."""
    span = 1 + sum(
        (size - 1) * abs(stride)
        for size, stride in zip(tensor.shape[1:], tensor.stride()[1:], strict=True)
    )
    if span >= _MAX_SAMPLE_SPAN:
        raise ValueError(
            f"backend='triton' needs each sample of {name} to span fewer than 2**31 elements, "
            f"got {span} (shape {tuple(tensor.shape)}, strides {tensor.stride()})"
        )


def _copy_back_if_flatten_copied(result: torch.Tensor, result_flat: torch.Tensor) -> None:
    """Write the kernel's output back where ``flatten(2)`` had to copy instead of view.

    Outputs keep the input's layout; only a layout that can't merge H and W (say, a transposed
    map) makes the flat view a copy, at the price of one more pass.
    """
    if result_flat.data_ptr() != result.data_ptr():
        result.copy_(result_flat.view(result.shape))


def feature_mix_forward_triton(
    feat: torch.Tensor, plan: MixPlan
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the forward kernels of any feature-mix mode (docs/op.md#feature-mix-family).

    Args:
        feat: (N, C, H, W) float32/float16/bfloat16 map, any strides.
        plan: the validated mix (:class:`~pmm_kernels.ops.plan.MixPlan`), tensors on feat's
            device; with ``"keys"`` cells the keys are float32.

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
    _check_sample_span("feat", feat)
    n, c, h, w = feat.shape
    hw = h * w
    bh, bw = plan.block_size
    rows, cols = block_grid(h, w, plan.block_size)
    num_blocks = 1 if plan.cells.kind == "corner" else plan.num_blocks
    device = feat.device

    out = torch.empty_like(feat, memory_format=torch.preserve_format)
    partners = torch.empty(n, dtype=torch.int64, device=device)
    blocks = torch.empty(n, num_blocks, dtype=torch.int64, device=device)
    mask = torch.empty(n, h, w, dtype=torch.bool, device=device)
    lam = torch.empty(n, dtype=torch.float32, device=device)
    # The kernels walk cells as one flat index p = h * W + w: a view for contiguous and
    # channels_last maps, a copy only where H and W can't merge (e.g. a transposed map).
    feat_flat, out_flat = feat.flatten(2), out.flatten(2)

    source, num_c_blocks = _plan_source(feat_flat, out_flat, plan.cells)
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
    if plan.cells.kind == "weights":
        # The saliency pass already copied feat to out: rewrite only the selected blocks.
        patch_q = min(block_q, _PATCH_TILE // 16)
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
        _mix_kernel[_stream_grid(n, c, hw)](
            feat_flat,
            out_flat,
            partners,
            mask,
            c,
            hw,
            *feat_flat.stride(),
            *out_flat.stride(),
        )
    _copy_back_if_flatten_copied(out, out_flat)
    return out, partners, blocks, mask, lam


def _plan_source(
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


def feature_mix_backward_triton(
    grad_out: torch.Tensor, partners: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Launch the backward kernel of any feature-mix mode; bit-exact to the PyTorch path on CPU.

    Cells zeroed (mask set, partner -1) get a zero gradient; no sample takes from -1.
    """
    _check_sample_span("grad_out", grad_out)
    n, c, h, w = grad_out.shape
    hw = h * w
    # Takers grouped by the sample they took from, ascending within a group (stable sort); the
    # group of sample i ends at bucket_end[i + 1], the unmixed samples (-1) come first.
    order = torch.sort(partners, stable=True).indices
    counts = torch.zeros(n + 1, dtype=torch.int64, device=grad_out.device)
    counts.scatter_add_(0, partners + 1, torch.ones_like(partners))
    bucket_end = counts.cumsum(0)

    grad_feat = torch.empty_like(grad_out, memory_format=torch.preserve_format)
    grad_out_flat, grad_feat_flat = grad_out.flatten(2), grad_feat.flatten(2)
    round_to_bf16 = grad_out.dtype == torch.bfloat16
    _feature_mix_bwd_kernel[_stream_grid(n, c, hw)](
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
    _copy_back_if_flatten_copied(grad_feat, grad_feat_flat)
    return grad_feat
