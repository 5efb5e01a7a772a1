"""The feature-mix family as two ``torch.library`` custom ops behind one autograd.Function.

The custom ops (``pmm::feature_mix_forward`` and ``pmm::feature_mix_backward``) make the op opaque
to ``torch.compile``: no graph break inside it, and fake implementations give the outputs' shapes
and strides (the real outputs are allocated to match them). Each op runs either the Triton kernels
(``feature_mix_triton``) or the PyTorch path (``reference``), as the caller chose: the two
launchers share one signature, ``(feat, MixPlan)``, and one contract. :func:`resolve_backend` is
the policy that decides which, :func:`launchers` the one place that turns the decision into
code.

Both ops also take transformer tokens: the forward op with ``token_grid = [height, width,
prefix]`` mixes the patch tokens of an (N, prefix + H*W, C) tensor and copies its prefix tokens,
writing the mixed patches straight into the output tokens; the backward op, given a 3-D
``grad_out``, writes the tokens' gradient the same way. So tokens cost the passes a map costs,
with no split of the tokens before the op nor a join after it.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import Literal, NamedTuple

import torch

from pmm_kernels.ops import reference
from pmm_kernels.ops.plan import MixPlan
from pmm_kernels.ops.utils import patch_view

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
Forward = Callable[[torch.Tensor, MixPlan, torch.Tensor | None], MixOutputs]
Backward = Callable[
    [
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        tuple[int, int],
        bool,
        torch.Tensor | None,
    ],
    torch.Tensor,
]


class Launchers(NamedTuple):
    """A backend's forward ``(feat, plan, out)`` and backward ``(grad_out, partners, blocks,
    mask, block_size, from_partner, out)``; ``out`` None allocates the result, else it is
    written there."""

    forward: Forward
    backward: Backward


def launchers(use_triton: bool) -> Launchers:
    """The launchers of the backend that :func:`resolve_backend` chose: the one place where the
    op turns that choice into code. Looked up on every call, so a test may patch them."""
    if not use_triton:
        return Launchers(reference.feature_mix_forward_torch, reference.feature_mix_backward_torch)
    kernels = _triton_module()

    def backward(grad_out, partners, blocks, mask, block_size, from_partner, out):
        # Mode-independent: a zeroing mode's partners are all -1, so no cell has a taker.
        return kernels.feature_mix_backward_triton(grad_out, partners, mask, out)

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
    token_grid: list[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixed features and ``(partners, blocks, mask, lam)``: ``(feat, MixPlan.op_args(),
    use_triton, token_grid)``, inputs already validated (see
    :class:`~pmm_kernels.ops.plan.MixPlan`).

    ``token_grid`` is ``[]`` for an (N, C, H, W) ``feat``, or ``[H, W, prefix]`` for (N,
    prefix + H*W, C) tokens: their patch tokens are mixed into the output tokens' own patch
    positions and the prefix tokens copied.
    """
    plan = MixPlan.from_op_args(
        cells, cell_kind, labels, u, given_partners, block_h, block_w, num_blocks, partner_rule
    )
    forward = launchers(use_triton).forward
    if not token_grid:
        return forward(feat, plan, None)
    height, width, prefix = token_grid
    out = torch.empty_like(feat, memory_format=torch.preserve_format)
    out[:, :prefix].copy_(feat[:, :prefix])
    _, partners, blocks, mask, lam = forward(
        patch_view(feat, height, width, prefix), plan, patch_view(out, height, width, prefix)
    )
    return out, partners, blocks, mask, lam


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
    token_grid,
):
    n = feat.shape[0]
    h, w = token_grid[:2] if token_grid else feat.shape[2:]
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
    modes. A 3-D ``grad_out`` is the gradient of (N, P + H*W, C) tokens (H, W those of ``mask``):
    the prefix's gradient is copied, the patches' written into the tokens' gradient."""
    backward = launchers(use_triton).backward
    block_size = (block_h, block_w)
    if grad_out.dim() == 4:
        return backward(grad_out, partners, blocks, mask, block_size, from_partner, None)
    height, width = mask.shape[1:]
    prefix = grad_out.shape[1] - height * width
    grad = torch.empty_like(grad_out, memory_format=torch.preserve_format)
    grad[:, :prefix].copy_(grad_out[:, :prefix])
    backward(
        patch_view(grad_out, height, width, prefix),
        partners,
        blocks,
        mask,
        block_size,
        from_partner,
        patch_view(grad, height, width, prefix),
    )
    return grad


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
    return _replay(grad, partners, mask), *([None] * 7)


def _replay(x: torch.Tensor, partners: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """:func:`~pmm_kernels.ops.reference.replay_mix_torch` of a map, or of the patches of
    tokens (a 3-D ``x``, prefix kept), in differentiable ops."""
    if x.dim() == 4:
        return reference.replay_mix_torch(x, partners, mask)
    height, width = mask.shape[1:]
    prefix = x.shape[1] - height * width
    mixed = reference.replay_mix_torch(patch_view(x, height, width, prefix), partners, mask)
    return torch.cat([x[:, :prefix], mixed.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)


feature_mix_backward.register_autograd(_backward_backward, setup_context=_backward_setup_context)


@feature_mix_backward.register_vmap
def _(info, in_dims, grad_out, partners, blocks, mask, block_h, block_w, from_partner, use_triton):
    # Many gradients of one mix (torch.func.jacrev): the plan routes every channel alike, so the
    # batch folds into the channels (the last dim of tokens, dim 1 of a map) and one call
    # serves all.
    if any(dim is not None for dim in in_dims[1:4]):
        raise ValueError(
            "vmap over feature_mix_backward: only grad_out may be batched, not the plan"
        )
    channel_dim = 2 if grad_out.dim() == 4 else 1  # grad_out has the vmap dim here
    batched = grad_out.movedim(in_dims[0], channel_dim)
    folded = batched.shape[channel_dim : channel_dim + 2]
    grad_feat = feature_mix_backward(
        batched.flatten(channel_dim, channel_dim + 1),
        partners,
        blocks,
        mask,
        block_h,
        block_w,
        from_partner,
        use_triton,
    )
    return grad_feat.unflatten(channel_dim, folded), channel_dim


class FeatureMixFunction(torch.autograd.Function):
    """Forward mixes; backward routes each cell's gradient back to the sample it came from.

    Called as ``apply(feat, *plan.op_args(), use_triton, token_grid)`` (:func:`mix` does).
    Only ``feat`` receives a gradient: every other input is a constant. Written with
    ``setup_context``, so the ``torch.func`` transforms (``jacrev``, ``vjp``) apply.
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
        token_grid,
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
            token_grid,
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, _, _, _, _, _, block_h, block_w, _, partner_rule, use_triton, _ = inputs
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
        return (grad_feat, *([None] * 11))


def mix(
    feat: torch.Tensor,
    plan: MixPlan,
    use_triton: bool,
    token_grid: tuple[int, int, int] | None = None,
) -> MixOutputs:
    """The differentiable mix of ``feat`` by ``plan`` on the chosen backend: ``(out, partners,
    blocks, mask, lam)``, only ``out`` differentiable. With ``token_grid = (H, W, prefix)``,
    ``feat`` is (N, prefix + H*W, C) tokens and ``out`` the mixed tokens."""
    grid = list(token_grid) if token_grid is not None else []
    return FeatureMixFunction.apply(feat, *plan.op_args(), use_triton, grid)
