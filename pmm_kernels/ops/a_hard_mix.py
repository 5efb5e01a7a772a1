"""A-Hard-Mix as two ``torch.library`` custom ops behind one ``torch.autograd.Function``.

The custom ops (``pmm::a_hard_mix_forward`` and ``pmm::a_hard_mix_backward``) make the op opaque
to ``torch.compile``: no graph break inside it, and fake implementations give the output shapes.
Each op runs either the Triton kernels or the PyTorch path, as the caller chose.
"""

import torch

from pmm_kernels.ops import reference


def _triton_module():
    # Imported on first use: triton is absent on some platforms and the PyTorch path needs none.
    from pmm_kernels.ops import feature_mix_triton

    return feature_mix_triton


@torch.library.custom_op("pmm::a_hard_mix_forward", mutates_args=())
def a_hard_mix_forward(
    feat: torch.Tensor,
    attn: torch.Tensor,
    labels: torch.Tensor,
    u: torch.Tensor | None,
    negatives: torch.Tensor | None,
    block_h: int,
    block_w: int,
    num_blocks: int,
    use_triton: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixed features and ``(negatives, blocks, mask, lam)``; inputs are already validated."""
    forward = (
        _triton_module().a_hard_mix_forward_triton
        if use_triton
        else reference.a_hard_mix_forward_torch
    )
    return forward(feat, attn, labels, u, negatives, (block_h, block_w), num_blocks)


@a_hard_mix_forward.register_fake
def _(feat, attn, labels, u, negatives, block_h, block_w, num_blocks, use_triton):
    n, _, h, w = feat.shape
    return (
        torch.empty_like(feat, memory_format=torch.preserve_format),
        feat.new_empty(n, dtype=torch.int64),
        feat.new_empty(n, num_blocks, dtype=torch.int64),
        feat.new_empty(n, h, w, dtype=torch.bool),
        feat.new_empty(n, dtype=torch.float32),
    )


@torch.library.custom_op("pmm::a_hard_mix_backward", mutates_args=())
def a_hard_mix_backward(
    grad_out: torch.Tensor,
    negatives: torch.Tensor,
    blocks: torch.Tensor,
    mask: torch.Tensor,
    block_h: int,
    block_w: int,
    use_triton: bool,
) -> torch.Tensor:
    """Gradient w.r.t. ``feat`` (SPEC step 5)."""
    if use_triton:
        return _triton_module().feature_mix_backward_triton(grad_out, negatives, mask)
    return reference.a_hard_mix_backward_torch(
        grad_out, negatives, blocks, mask, (block_h, block_w)
    )


@a_hard_mix_backward.register_fake
def _(grad_out, negatives, blocks, mask, block_h, block_w, use_triton):
    return torch.empty_like(grad_out, memory_format=torch.preserve_format)


class AHardMixFunction(torch.autograd.Function):
    """Forward mixes; backward routes each cell's gradient back to the sample it came from.

    Only ``feat`` receives a gradient: ``attn``, ``labels``, ``u`` and ``negatives`` are
    treated as constants.
    """

    @staticmethod
    def forward(ctx, feat, attn, labels, u, negatives, block_size, num_blocks, use_triton):
        out, partners, blocks, mask, lam = a_hard_mix_forward(
            feat, attn, labels, u, negatives, *block_size, num_blocks, use_triton
        )
        ctx.save_for_backward(partners, blocks, mask)
        ctx.block_size = block_size
        ctx.use_triton = use_triton
        ctx.mark_non_differentiable(partners, blocks, mask, lam)
        return out, partners, blocks, mask, lam

    @staticmethod
    def backward(ctx, grad_out, *_):
        partners, blocks, mask = ctx.saved_tensors
        grad_feat = a_hard_mix_backward(
            grad_out, partners, blocks, mask, *ctx.block_size, ctx.use_triton
        )
        return grad_feat, None, None, None, None, None, None, None
