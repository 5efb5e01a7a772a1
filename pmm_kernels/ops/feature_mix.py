"""The feature-mix family as two ``torch.library`` custom ops behind one autograd.Function.

The custom ops (``pmm::feature_mix_forward`` and ``pmm::feature_mix_backward``) make the op opaque
to ``torch.compile``: no graph break inside it, and fake implementations give the outputs' shapes
and strides (the real outputs are allocated to match them). Each op runs either the Triton kernels
(``feature_mix_triton``) or the PyTorch path (``reference``), as the caller chose: the two
launchers share one signature, ``(feat, MixPlan)``, and one contract. :func:`resolve_backend` is
the policy that decides which, :func:`launchers` the one place that turns the decision into
code.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import Literal, NamedTuple

import torch

from pmm_kernels.ops import reference
from pmm_kernels.ops.plan import MixPlan

Backend = Literal["auto", "torch", "triton"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "triton")
BACKEND_ENV = "PMM_KERNELS_BACKEND"


def resolve_backend(backend: str | None, feat: torch.Tensor, num_grid_blocks: int) -> bool:
    """Whether the Triton kernels run; "auto" picks them where they apply, "triton" insists.

    Args:
        backend: one of :data:`BACKENDS`, or None to read :data:`BACKEND_ENV` (default "auto").
        feat: the (N, C, H, W) feature map the op runs on.
        num_grid_blocks: blocks in the block grid (rows * cols).

    Raises:
        ValueError: an unknown backend, or "triton" where the kernels cannot run.
        TypeError: "triton" with float64 ``feat``.
    """
    if backend is None:
        backend = os.environ.get(BACKEND_ENV, "auto")
        source = f"the {BACKEND_ENV} environment variable"
    else:
        source = "backend"
    if backend not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return False
    n, _, h, w = feat.shape
    if backend == "auto":
        if not feat.is_cuda or feat.dtype == torch.float64 or not _triton_available():
            return False
        return _unsupported_reason(n, h, w, num_grid_blocks) is None

    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if not feat.is_cuda and not (feat.device.type == "cpu" and interpreted):
        raise ValueError(
            f"backend='triton' runs on CUDA tensors (or on CPU tensors with TRITON_INTERPRET=1 "
            f"set before triton is imported), got tensors on {feat.device}"
        )
    if feat.dtype == torch.float64:
        raise TypeError(
            "backend='triton' supports float16, bfloat16 and float32 feat, got float64; "
            "use backend='torch'"
        )
    reason = _unsupported_reason(n, h, w, num_grid_blocks)
    if reason is not None:
        raise ValueError(reason)
    return True


def _triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def _unsupported_reason(n: int, h: int, w: int, num_grid_blocks: int) -> str | None:
    # Imported on first use, as the kernels are: triton_launch imports triton.
    from pmm_kernels.ops.triton_launch import unsupported_reason

    return unsupported_reason(n, h, w, num_grid_blocks)


def _triton_module():
    # Imported on first use: triton is absent on some platforms and the PyTorch path needs none.
    from pmm_kernels.ops import feature_mix_triton

    return feature_mix_triton


# out, partners, blocks, mask, lam
MixOutputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
Forward = Callable[[torch.Tensor, MixPlan], MixOutputs]
Backward = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int], bool], torch.Tensor
]


class Launchers(NamedTuple):
    """A backend's forward ``(feat, plan)`` and backward ``(grad_out, partners, blocks, mask,
    block_size, from_partner)``."""

    forward: Forward
    backward: Backward


def launchers(use_triton: bool) -> Launchers:
    """The launchers of the backend that :func:`resolve_backend` chose: the one place where the
    op turns that choice into code. Looked up on every call, so a test may patch them."""
    if not use_triton:
        return Launchers(reference.feature_mix_forward_torch, reference.feature_mix_backward_torch)
    kernels = _triton_module()

    def backward(grad_out, partners, blocks, mask, block_size, from_partner):
        # Mode-independent: a zeroing mode's partners are all -1, so no cell has a taker.
        return kernels.feature_mix_backward_triton(grad_out, partners, mask)

    return Launchers(kernels.feature_mix_forward_triton, backward)


@torch.library.custom_op("pmm::feature_mix_forward", mutates_args=())
def feature_mix_forward(
    feat: torch.Tensor,
    cells: torch.Tensor,
    cell_kind: str,
    labels: torch.Tensor,
    u: torch.Tensor | None,
    given_partners: torch.Tensor | None,
    block_h: int,
    block_w: int,
    num_blocks: int,
    partner_rule: str,
    use_triton: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixed features and ``(partners, blocks, mask, lam)``: ``(feat, MixPlan.op_args(),
    use_triton)``, inputs already validated (see :class:`~pmm_kernels.ops.plan.MixPlan`)."""
    plan = MixPlan.from_op_args(
        cells, cell_kind, labels, u, given_partners, block_h, block_w, num_blocks, partner_rule
    )
    return launchers(use_triton).forward(feat, plan)


@feature_mix_forward.register_fake
def _(
    feat,
    cells,
    cell_kind,
    labels,
    u,
    given_partners,
    block_h,
    block_w,
    num_blocks,
    partner_rule,
    use_triton,
):
    n, _, h, w = feat.shape
    return (
        torch.empty_like(feat, memory_format=torch.preserve_format),
        feat.new_empty(n, dtype=torch.int64),
        feat.new_empty(n, num_blocks, dtype=torch.int64),
        feat.new_empty(n, h, w, dtype=torch.bool),
        feat.new_empty(n, dtype=torch.float32),
    )


@torch.library.custom_op("pmm::feature_mix_backward", mutates_args=())
def feature_mix_backward(
    grad_out: torch.Tensor,
    partners: torch.Tensor,
    blocks: torch.Tensor,
    mask: torch.Tensor,
    block_h: int,
    block_w: int,
    from_partner: bool,
    use_triton: bool,
) -> torch.Tensor:
    """Gradient w.r.t. ``feat`` (docs/op.md#gradient); ``from_partner`` False for the zeroing
    modes."""
    return launchers(use_triton).backward(
        grad_out, partners, blocks, mask, (block_h, block_w), from_partner
    )


@feature_mix_backward.register_fake
def _(grad_out, partners, blocks, mask, block_h, block_w, from_partner, use_triton):
    return torch.empty_like(grad_out, memory_format=torch.preserve_format)


def _backward_setup_context(ctx, inputs, output):
    _, partners, _, mask, *_ = inputs
    ctx.save_for_backward(partners, mask)


def _backward_backward(ctx, grad):
    # The backward is linear in grad_out (it routes each cell's gradient to the cell's source),
    # so its own gradient is its adjoint: the forward copy with the same plan. This makes
    # double backward (gradgradcheck, Hessian-vector products, gradient penalties) work.
    partners, mask = ctx.saved_tensors
    return reference.replay_mix_torch(grad, partners, mask), *([None] * 7)


feature_mix_backward.register_autograd(_backward_backward, setup_context=_backward_setup_context)


@feature_mix_backward.register_vmap
def _(info, in_dims, grad_out, partners, blocks, mask, block_h, block_w, from_partner, use_triton):
    # Many gradients of one mix (torch.func.jacrev): the plan routes every channel alike, so the
    # batch folds into the channels and one call serves all.
    if any(dim is not None for dim in in_dims[1:4]):
        raise ValueError(
            "vmap over feature_mix_backward: only grad_out may be batched, not the plan"
        )
    batched = grad_out.movedim(in_dims[0], 1)
    n, b, c, h, w = batched.shape
    grad_feat = feature_mix_backward(
        batched.reshape(n, b * c, h, w),
        partners,
        blocks,
        mask,
        block_h,
        block_w,
        from_partner,
        use_triton,
    )
    return grad_feat.view(n, b, c, h, w), 1


class FeatureMixFunction(torch.autograd.Function):
    """Forward mixes; backward routes each cell's gradient back to the sample it came from.

    Called as ``apply(feat, *plan.op_args(), use_triton)`` (:func:`mix` does). Only ``feat``
    receives a gradient: every other input is a constant. Written with ``setup_context``, so
    the ``torch.func`` transforms (``jacrev``, ``vjp``) apply.
    """

    @staticmethod
    def forward(
        feat,
        cells,
        cell_kind,
        labels,
        u,
        given_partners,
        block_h,
        block_w,
        num_blocks,
        partner_rule,
        use_triton,
    ):
        return feature_mix_forward(
            feat,
            cells,
            cell_kind,
            labels,
            u,
            given_partners,
            block_h,
            block_w,
            num_blocks,
            partner_rule,
            use_triton,
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, _, _, _, _, _, block_h, block_w, _, partner_rule, use_triton = inputs
        _, partners, blocks, mask, lam = output
        ctx.save_for_backward(partners, blocks, mask)
        ctx.block_size = (block_h, block_w)
        ctx.from_partner = partner_rule != "none"
        ctx.use_triton = use_triton
        ctx.mark_non_differentiable(partners, blocks, mask, lam)

    @staticmethod
    def backward(ctx, grad_out, *_):
        partners, blocks, mask = ctx.saved_tensors
        grad_feat = feature_mix_backward(
            grad_out, partners, blocks, mask, *ctx.block_size, ctx.from_partner, ctx.use_triton
        )
        return (grad_feat, *([None] * 10))


def mix(feat: torch.Tensor, plan: MixPlan, use_triton: bool) -> MixOutputs:
    """The differentiable mix of ``feat`` by ``plan`` on the chosen backend: ``(out, partners,
    blocks, mask, lam)``, only ``out`` differentiable."""
    return FeatureMixFunction.apply(feat, *plan.op_args(), use_triton)
