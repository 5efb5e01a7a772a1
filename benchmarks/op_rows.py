"""The A-Hard-Mix op rows' inputs, calls and byte counts, shared by the pytest-benchmark rows
(``test_a_hard_mix.py``) and ``gpu_check.py``.

Every row runs at the paper's map, :data:`pmm_kernels.testing.cases.PAPER` (C=2048, 24x8, k=3
blocks of 3x2), with a batch size and dtype of its own.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pmm_kernels import a_hard_mix
from pmm_kernels.ops import reference
from pmm_kernels.ops.plan import CellSource, MixPlan
from pmm_kernels.testing.authors_ops import authors_a_hard_mix, authors_mix
from pmm_kernels.testing.cases import PAPER

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
C, H, W = PAPER.c, PAPER.h, PAPER.w
BLOCK_SIZE, NUM_BLOCKS = PAPER.block_size, PAPER.num_blocks


def make_inputs(n: int, dtype: torch.dtype, attn_form: str):
    """``(feat, attn, labels, partners)`` of an N-sample batch at the paper's map on DEVICE."""
    generator = torch.Generator().manual_seed(0)
    feat = torch.randn(n, C, H, W, generator=generator).to(DEVICE, dtype)
    if attn_form == "weights":
        attn = torch.rand(n, C, generator=generator).to(DEVICE)
    else:
        attn = torch.rand(n, H, W, generator=generator).to(DEVICE)
    labels = (torch.arange(n) // 4).to(DEVICE)  # PK batches, K = 4
    partners = torch.randint(0, n, (n,), generator=generator).to(DEVICE)
    return feat, attn, labels, partners


def op_bytes(feat: torch.Tensor, attn_form: str, passes: str) -> float:
    """Bytes the op must move at least (docs/performance.md#bytes-per-pass)."""
    nbytes = feat.numel() * feat.element_size()
    patch = 2 * nbytes * PAPER.replaced_fraction if attn_form == "weights" else 0
    forward = 2 * nbytes + patch
    if passes == "backward":
        return 2 * nbytes
    return forward + (2 * nbytes if passes == "forward_backward" else 0)


def make_call(impl: str, feat, attn, labels, partners, passes: str) -> Callable[[], object]:
    """The benchmarked call (passes: forward, forward_backward or backward); the backward takes a
    fixed grad_out."""
    if impl == "authors":

        def forward(x):
            if attn.dim() == 2:
                return authors_a_hard_mix(x, attn, partners, k=NUM_BLOCKS)
            return authors_mix(x, attn, partners, k=NUM_BLOCKS)[0]
    elif impl == "torch_compile":
        # N symbolic: one graph per dtype, attn form and grad mode, whatever the batch.
        compiled = torch.compile(reference.feature_mix_forward_torch, dynamic=True)
        cells = CellSource.saliency(attn)
        plan = MixPlan(cells, labels, None, partners, BLOCK_SIZE, NUM_BLOCKS, "different_label")

        def forward(x):
            return compiled(x, plan)[0]
    else:

        def forward(x):
            return a_hard_mix(
                x,
                attn,
                labels,
                partners=partners,
                block_size=BLOCK_SIZE,
                num_blocks=NUM_BLOCKS,
                backend=impl,
            )

    if passes == "forward":
        return lambda: forward(feat)
    leaf = feat.detach().requires_grad_()
    grad_out = torch.randn_like(feat)
    if passes == "backward":  # one forward, then its backward alone, again and again
        out = forward(leaf)
        return lambda: torch.autograd.grad(out, leaf, grad_out, retain_graph=True)
    return lambda: torch.autograd.grad(forward(leaf), leaf, grad_out)
