"""The public entry points of the feature-mix family.

:func:`feature_mix` (every mode of docs/op.md#modes), :func:`a_hard_mix` (the paper's mode, its
own signature), :func:`saliency` (the Grad-CAM map the attentive modes rank blocks by) and
:func:`mixed_targets` (the loss targets of a mix). Each checks its arguments
(:mod:`pmm_kernels.validation`), makes the random draws of docs/op.md#draws and calls the custom
op (:mod:`pmm_kernels.ops.feature_mix`), whose backend policy picks the Triton or PyTorch path.
"""

from __future__ import annotations

from typing import Literal, overload

import torch
import torch.nn.functional as F

from pmm_kernels import validation as check
from pmm_kernels.modes import MODES, MixInfo, MixMode
from pmm_kernels.ops.feature_mix import BACKENDS, Backend, mix, resolve_backend
from pmm_kernels.ops.plan import CellSource, MixPlan
from pmm_kernels.ops.reference import saliency_torch
from pmm_kernels.ops.utils import batch_drop_corner, batch_drop_size, draw_uniform
from pmm_kernels.tokens import TokenGrid

__all__ = [
    "BACKENDS",
    "MODES",
    "Backend",
    "MixInfo",
    "MixMode",
    "a_hard_mix",
    "feature_mix",
    "mixed_targets",
    "saliency",
]


def saliency(feat: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Grad-CAM style saliency ``ReLU(sum_c weights[n, c] * feat[n, c, h, w])``.

    Args:
        feat: (N, C, H, W) floating feature map, any strides.
        weights: (N, C) channel weights, e.g. the spatial mean of d(score)/d(feat).

    Returns:
        (N, H, W) float32 map (float64 for float64 ``feat``); NaN inputs give NaN cells.

    Example:
        >>> feat = torch.randn(2, 8, 6, 4)
        >>> saliency(feat, torch.rand(2, 8)).shape
        torch.Size([2, 6, 4])
    """
    feat = check.check_feat(feat)
    weights = check.check_weights("weights", weights, feat)
    check.check_same_device(feat, weights=weights)
    return saliency_torch(feat, weights)


def feature_mix(
    feat: torch.Tensor,
    labels: torch.Tensor | None,
    attn: torch.Tensor | None = None,
    *,
    mode: str = "a_hard_mix",
    block_size: tuple[int, int] = (3, 2),
    num_blocks: int = 3,
    partners: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    h_ratio: float = 0.33,
    w_ratio: float = 1.0,
    backend: Backend | None = None,
    token_grid: TokenGrid | None = None,
) -> tuple[torch.Tensor, MixInfo]:
    """Mix a feature map with one of the modes of docs/op.md#modes and say what was done.

    Every mode cuts the map into ``block_size`` blocks (row-major, edge blocks clipped), chooses
    cells for each sample and either copies them, in all channels, from a partner sample or
    zeroes them. Values are copied bit-exactly; the gradient flows back to wherever each value
    came from, and zeroed cells get none.

    ============== ============================= ============ ================== =============
    mode           cells                         filled from  partner            loss labels
    ============== ============================= ============ ================== =============
    ``a_hard_mix`` k most salient blocks         partner      a different label  unchanged
    ``hard_mix``   k random blocks               partner      a different label  unchanged
    ``a_cutmix``   k most salient blocks         partner      any other sample   mixed by area
    ``cutmix``     k random blocks               partner      any other sample   mixed by area
    ``cutout``     k random blocks               zeros        none               unchanged
    ``batch_drop`` one rectangle for the batch   zeros        none               unchanged
    ============== ============================= ============ ================== =============

    Random draws, in this order, from ``generator``: ``keys = torch.rand(N, rows * cols)`` for
    random blocks (each sample takes its k largest keys), then ``u = torch.rand(N)`` for
    partners; ``batch_drop`` draws ``torch.rand(2)`` for its rectangle's top-left cell. A CPU
    generator gives the same result on every backend.

    Args:
        feat: (N, C, H, W) float16/bfloat16/float32 feature map (float64 on the torch backend),
            any strides, CPU or CUDA.
        labels: (N,) integer identity labels; required by the ``"different label"`` modes,
            may be None for the others.
        attn: the saliency of the attentive modes (``a_hard_mix``, ``a_cutmix``; required there
            and rejected elsewhere): (N, C) channel weights, giving ``ReLU(sum_c attn * feat)``,
            or an (N, H, W) saliency map. A constant: it gets no gradient.
        mode: one of :data:`MODES`.
        block_size: block height and width in cells (not used by ``batch_drop``).
        num_blocks: k, the blocks per sample, 1 <= k <= number of blocks (not used by
            ``batch_drop``).
        partners: (N,) partner of each sample in [-1, N), -1 meaning "do not mix"; skips the
            partner draw. Only for the modes with a partner. Checking their range reads them on
            the host (one sync on CUDA; under ``torch.compile`` an on-device assert instead).
        generator: generator of the random draws; None uses feat's device's default generator
            (the only choice under ``torch.compile``).
        h_ratio: ``batch_drop``'s rectangle height, ``max(1, round(h_ratio * H))`` cells.
        w_ratio: ``batch_drop``'s rectangle width, ``max(1, round(w_ratio * W))`` cells.
        backend: "triton" (CUDA, or CPU under ``TRITON_INTERPRET=1``), "torch", or "auto"
            (Triton for CUDA tensors where it applies). ``None`` reads
            ``PMM_KERNELS_BACKEND``, default "auto".
        token_grid: with a :class:`~pmm_kernels.tokens.TokenGrid`, ``feat`` is (N, P + H*W, C)
            transformer tokens: the patch tokens are mixed as their (N, C, H, W) map (``attn``
            and the info refer to that map), the P prefix tokens pass through unchanged, and
            the output is tokens, written in one pass (docs/transformers.md).

    Returns:
        The (N, C, H, W) output (tokens with ``token_grid``), in ``feat``'s dtype and memory
        format, and a :class:`MixInfo`.

    Raises:
        TypeError: a non-tensor argument, non-floating ``feat`` or non-integer labels/partners.
        ValueError: an unknown mode, wrong shapes, devices that differ, a bad block size,
            num_blocks, ratio or partners, or an argument the mode does not take.

    Example:
        >>> feat = torch.randn(4, 16, 24, 8, requires_grad=True)
        >>> out, info = feature_mix(feat, None, mode="cutmix", generator=torch.Generator())
        >>> info.lam  # 3 blocks of 3x2 cells out of 24x8
        tensor([0.0938, 0.0938, 0.0938, 0.0938])
        >>> targets = mixed_targets(torch.tensor([0, 0, 1, 1]), info, num_classes=2)
    """
    tokens = None
    if token_grid is not None:
        if not isinstance(token_grid, TokenGrid):
            raise TypeError(f"token_grid must be a TokenGrid, got {check.describe(token_grid)}")
        tokens, feat = feat, token_grid.patches(feat)
    feat = check.check_feat(feat)
    n, _, h, w = feat.shape
    spec, attn, labels, block_size, (rows, cols), h_ratio, w_ratio, generator, partners = (
        check.check_mix_args(
            feat,
            labels,
            attn,
            mode=mode,
            block_size=block_size,
            num_blocks=num_blocks,
            partners=partners,
            generator=generator,
            h_ratio=h_ratio,
            w_ratio=w_ratio,
        )
    )
    use_triton = resolve_backend(backend, feat, rows * cols)

    # The draws of docs/op.md#draws, in that order.
    if attn is not None:  # the attentive modes, the only ones that take (and need) attn
        cells = CellSource.saliency(attn)
    elif spec.cells == "random":
        cells = CellSource("keys", draw_uniform((n, rows * cols), generator, feat.device))
    else:  # batch_drop's rectangle
        block_size = batch_drop_size(h, w, h_ratio, w_ratio)
        corner = batch_drop_corner(draw_uniform((2,), generator, feat.device), h, w, block_size)
        cells, num_blocks = CellSource("corner", corner), 1
    u = None
    if spec.partner_rule != "none" and partners is None:
        u = draw_uniform((n,), generator, feat.device)
    plan = MixPlan(cells, labels, u, partners, block_size, num_blocks, spec.partner_rule)
    if tokens is None:
        out, chosen, blocks, mask, lam = mix(feat, plan, use_triton)
    else:
        assert token_grid is not None
        out, chosen, blocks, mask, lam = mix(tokens, plan, use_triton, token_grid.op_grid())
    # Read by mixed_targets: the label-keeping modes and unpaired samples keep their labels.
    label_lam = torch.where(chosen >= 0, lam, 0.0) if spec.mixes_labels else torch.zeros_like(lam)
    return out, MixInfo(chosen, blocks, mask, lam, label_lam)


@overload
def a_hard_mix(
    feat: torch.Tensor,
    attn: torch.Tensor,
    labels: torch.Tensor,
    *,
    block_size: tuple[int, int] = ...,
    num_blocks: int = ...,
    partners: torch.Tensor | None = ...,
    generator: torch.Generator | None = ...,
    return_info: Literal[False] = ...,
    backend: Backend | None = ...,
) -> torch.Tensor: ...


@overload
def a_hard_mix(
    feat: torch.Tensor,
    attn: torch.Tensor,
    labels: torch.Tensor,
    *,
    block_size: tuple[int, int] = ...,
    num_blocks: int = ...,
    partners: torch.Tensor | None = ...,
    generator: torch.Generator | None = ...,
    return_info: Literal[True],
    backend: Backend | None = ...,
) -> tuple[torch.Tensor, MixInfo]: ...


def a_hard_mix(
    feat: torch.Tensor,
    attn: torch.Tensor,
    labels: torch.Tensor,
    *,
    block_size: tuple[int, int] = (3, 2),
    num_blocks: int = 3,
    partners: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    return_info: bool = False,
    backend: Backend | None = None,
) -> torch.Tensor | tuple[torch.Tensor, MixInfo]:
    """Attentive feature Hard-Mix: swap each sample's most salient blocks with a partner's.

    :func:`feature_mix` with ``mode="a_hard_mix"`` (docs/op.md#a_hard_mix). The map is cut into
    ``block_size`` blocks (row-major, edge blocks clipped). Each sample keeps its
    ``num_blocks`` highest-saliency blocks' positions and takes the values there, in all
    channels, from a partner of a different identity; values are copied bit-exactly. The
    gradient flows back to whichever sample each value came from. ``attn`` is a constant.

    Args:
        feat: (N, C, H, W) float16/bfloat16/float32 feature map (float64 on the torch backend),
            any strides, CPU or CUDA.
        attn: (N, C) channel weights, giving saliency ``ReLU(sum_c attn * feat)``, or an
            (N, H, W) saliency map used as given.
        labels: (N,) integer identity labels.
        block_size: block height and width in cells.
        num_blocks: k, the blocks replaced per sample, 1 <= k <= number of blocks.
        partners: (N,) partner of each sample in [-1, N), -1 meaning "do not mix"; skips
            sampling. Checking their range reads them on the host (one sync on CUDA).
        generator: generator for partner sampling; a CPU generator gives the same partners on
            every backend.
        return_info: also return a :class:`MixInfo`.
        backend: "triton" (CUDA, or CPU under ``TRITON_INTERPRET=1``), "torch", or "auto"
            (Triton for CUDA tensors). ``None`` reads ``PMM_KERNELS_BACKEND``, default "auto".

    Returns:
        The mixed (N, C, H, W) map, in ``feat``'s dtype and memory format, and with
        ``return_info`` a :class:`MixInfo`.

    Raises:
        TypeError: a non-tensor argument, non-floating ``feat`` or non-integer ``labels``.
        ValueError: wrong shapes, devices that differ, bad block size, num_blocks or partners.

    Example:
        >>> feat = torch.randn(4, 16, 24, 8, requires_grad=True)
        >>> out, info = a_hard_mix(feat, torch.rand(4, 16), torch.tensor([0, 0, 1, 1]),
        ...                        return_info=True)
        >>> info.lam  # 3 blocks of 3x2 cells out of 24x8
        tensor([0.0938, 0.0938, 0.0938, 0.0938])
    """
    check.check_feat(feat)
    check.check_tensor("attn", attn)
    check.check_tensor("labels", labels)
    out, info = feature_mix(
        feat,
        labels,
        attn,
        mode="a_hard_mix",
        block_size=block_size,
        num_blocks=num_blocks,
        partners=partners,
        generator=generator,
        backend=backend,
    )
    return (out, info) if return_info else out


def mixed_targets(
    labels: torch.Tensor, info: MixInfo | None, num_classes: int, smoothing: float = 0.0
) -> torch.Tensor:
    """The (smoothed) loss targets of a mix, docs/op.md#soft-targets.

    ``t_i = (1 - l_i) * onehot(y_i) + l_i * onehot(y_partner(i))`` with ``l = info.label_lam``:
    the area ``lam`` for the label-mixing modes (``a_cutmix``, ``cutmix``), 0 for the modes that
    keep their labels (``a_hard_mix``, ``hard_mix``, ``cutout``, ``batch_drop``) and for samples
    without a partner (-1), which so get ``onehot(y_i)``. Label smoothing then gives
    ``t * (1 - smoothing) + smoothing / num_classes``. ``info=None`` gives the (smoothed)
    one-hot targets of unmixed labels.

    Args:
        labels: (N,) integer class labels in [0, num_classes).
        info: the :class:`MixInfo` of the mix (of any mode), or None for unmixed targets.
        num_classes: number of classes.
        smoothing: label smoothing eps in [0, 1).

    Returns:
        (N, num_classes) float32 targets on ``labels``' device; each row sums to 1. Use them with
        :func:`pmm_kernels.soft_cross_entropy` or ``torch.nn.functional.cross_entropy``.

    Raises:
        TypeError: non-integer labels or partners, or an ``info`` that is not a MixInfo.
        ValueError: labels outside [0, num_classes), partners outside [-1, N), a ``lam`` or
            ``label_lam`` outside [0, 1] or NaN, or shapes that do not fit. Checking the ranges
            reads them on the host (one sync on CUDA; an on-device assert under
            ``torch.compile``).

    Example:
        >>> labels, partners = torch.tensor([0, 0, 1, 1]), torch.tensor([2, -1, 0, 1])
        >>> _, info = feature_mix(torch.randn(4, 8, 4, 4), labels, mode="cutmix",
        ...                       block_size=(2, 2), num_blocks=1, partners=partners)
        >>> mixed_targets(labels, info, num_classes=2)
        tensor([[0.7500, 0.2500],
                [1.0000, 0.0000],
                [0.2500, 0.7500],
                [0.2500, 0.7500]])
    """
    labels, smoothing = check.check_target_args(labels, info, num_classes, smoothing)
    targets = F.one_hot(labels, num_classes).float()
    if info is not None:
        share = info.lam if info.label_lam is None else info.label_lam
        partners = info.partners
        share = torch.where(partners >= 0, share, 0.0)[:, None]
        partner_targets = F.one_hot(labels[partners.clamp_min(0)], num_classes).float()
        targets = (1 - share) * targets + share * partner_targets
    return targets * (1 - smoothing) + smoothing / num_classes
