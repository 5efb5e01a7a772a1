"""Inputs shared by the op's tests: feature maps in every layout and hypothesis strategies."""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st

from pmm_kernels.testing.cases import MAP_LAYOUTS, in_layout

LAYOUTS = (*MAP_LAYOUTS, "strided")

SEEDS = st.integers(0, 2**31 - 1)


def make_feat(shape, dtype=torch.float32, layout="contiguous", device="cpu", seed=None, scale=1.0):
    """Fresh random features (times ``scale``) in the requested memory layout.

    Scale here, not after: arithmetic on the result would give a new, dense tensor and lose the
    layout (the token view's batch stride, the strided map's gaps).
    """
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    n, c, h, w = shape
    if layout == "strided":  # every other channel of a transposed buffer: no dense layout at all
        base = torch.randn(n, 2 * c, w, h, generator=generator).transpose(2, 3) * scale
        return base[:, ::2].to(device=device, dtype=dtype)
    feat = (torch.randn(shape, generator=generator) * scale).to(device=device, dtype=dtype)
    return in_layout(feat, layout)


def copy_keeping_layout(x: torch.Tensor, device=None, values=None) -> torch.Tensor:
    """A copy of ``x`` (or of ``values``, x's shape) on ``device`` with x's strides and storage
    offset: ``x.to(device)`` would make a view with gaps (token patches, a strided map) dense."""
    device = x.device if device is None else device
    storage = torch.empty(
        x.untyped_storage().nbytes() // x.element_size(), dtype=x.dtype, device=device
    )
    copy = storage.as_strided(x.shape, x.stride(), x.storage_offset())
    return copy.copy_(x if values is None else values)


@st.composite
def mix_problems(draw, *, max_n: int, max_c: int, max_side: int, max_block: int = 4):
    """``((n, c, h, w), (bh, bw), num_blocks)``: a map, a block size and a k the grid allows."""
    n, c = draw(st.integers(1, max_n)), draw(st.integers(1, max_c))
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    bh, bw = draw(st.integers(1, max_block)), draw(st.integers(1, max_block))
    num_blocks = draw(st.integers(1, math.ceil(h / bh) * math.ceil(w / bw)), label="num_blocks")
    return (n, c, h, w), (bh, bw), num_blocks
