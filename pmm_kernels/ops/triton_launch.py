"""How the Triton kernels of :mod:`pmm_kernels.ops.feature_mix_triton` are launched: the shapes
they take, the tiles the streaming kernels try, and the layout helpers of their launchers.

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
from collections.abc import Callable
from typing import Any

import torch
import triton

__all__ = [
    "MAX_BATCH",
    "MAX_BLOCKS",
    "MAX_MAP_CELLS",
    "MAX_SAMPLE_SPAN",
    "check_sample_span",
    "copy_back_if_flatten_copied",
    "stream_configs",
    "stream_grid",
    "streams_16_byte_aligned",
    "tiles_for_layout",
    "tuning_bench",
    "unsupported_reason",
]

MAX_MAP_CELLS = 16384
MAX_BLOCKS = 16384
MAX_BATCH = 16384
# Offsets inside one sample are int32 (the sample's base offset is int64): half the registers of
# int64 addresses, which the unvectorised (unaligned) layouts need one of per element.
MAX_SAMPLE_SPAN = 2**31


def tuning_bench(kernel_call: Callable[[], object], quantiles: list[float] | None) -> Any:
    """Timing of one candidate tile: short runs suffice to rank three tiles."""
    return triton.testing.do_bench(kernel_call, warmup=5, rep=20, quantiles=quantiles)


def stream_configs() -> list[triton.Config]:
    """(BLOCK_C, BLOCK_HW, num_warps) candidates of the copy kernels: 16 elements per thread for
    launches that vectorise, 8 for the others (see :func:`tiles_for_layout`).

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


def tiles_for_layout(
    configs: list[triton.Config], named_args: dict[str, Any], **kwargs: Any
) -> list[triton.Config]:
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
    if h * w <= MAX_MAP_CELLS and num_grid_blocks <= MAX_BLOCKS and n <= MAX_BATCH:
        return None
    return (
        f"backend='triton' supports H*W <= {MAX_MAP_CELLS}, at most {MAX_BLOCKS} blocks and "
        f"N <= {MAX_BATCH}; got N={n}, H*W={h * w}, {num_grid_blocks} blocks. "
        "Use backend='torch' for larger maps."
    )


def stream_grid(n: int, c: int, hw: int) -> Callable[[dict[str, Any]], tuple[int, int, int]]:
    """Grid (sample, channel tile, cell tile) of the autotuned streaming kernels."""
    return lambda meta: (n, triton.cdiv(c, meta["BLOCK_C"]), triton.cdiv(hw, meta["BLOCK_HW"]))


def check_sample_span(name: str, tensor: torch.Tensor) -> None:
    """The kernels address inside one sample with int32 offsets."""
    span = 1 + sum(
        (size - 1) * abs(stride)
        for size, stride in zip(tensor.shape[1:], tensor.stride()[1:], strict=True)
    )
    if span >= MAX_SAMPLE_SPAN:
        raise ValueError(
            f"backend='triton' needs each sample of {name} to span fewer than 2**31 elements, "
            f"got {span} (shape {tuple(tensor.shape)}, strides {tensor.stride()})"
        )


def copy_back_if_flatten_copied(result: torch.Tensor, result_flat: torch.Tensor) -> None:
    """Write the kernel's output back where ``flatten(2)`` had to copy instead of view.

    Outputs keep the input's layout; only a layout that can't merge H and W (say, a transposed
    map) makes the flat view a copy, at the price of one more pass.
    """
    if result_flat.data_ptr() != result.data_ptr():
        result.copy_(result_flat.view(result.shape))
