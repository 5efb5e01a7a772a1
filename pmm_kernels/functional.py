"""Functional API: :func:`feature_mix` (every mode), :func:`a_hard_mix`, :func:`saliency` and
:func:`mixed_targets`."""

from __future__ import annotations

import importlib.util
import os
from typing import Literal, NamedTuple, overload

import torch
import torch.nn.functional as F

from pmm_kernels import validation as check
from pmm_kernels.ops.feature_mix import FeatureMixFunction
from pmm_kernels.ops.reference import saliency_torch
from pmm_kernels.ops.utils import batch_drop_corner, batch_drop_size, block_grid

Backend = Literal["auto", "torch", "triton"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "triton")
BACKEND_ENV = "PMM_KERNELS_BACKEND"


class MixMode(NamedTuple):
    """How a mode chooses its cells and fills them (docs/op.md#feature-mix-family).

    Attributes:
        cells: ``"salient"`` (the k most salient blocks), ``"random"`` (k random blocks) or
            ``"rectangle"`` (one rectangle shared by the batch).
        partner_rule: ``"different_label"``, ``"any_other"``, or ``"none"`` (cells are zeroed).
        mixes_labels: whether the loss should see :func:`mixed_targets` instead of the labels.
    """

    cells: str
    partner_rule: str
    mixes_labels: bool


MODES: dict[str, MixMode] = {
    "a_hard_mix": MixMode("salient", "different_label", False),
    "hard_mix": MixMode("random", "different_label", False),
    "a_cutmix": MixMode("salient", "any_other", True),
    "cutmix": MixMode("random", "any_other", True),
    "cutout": MixMode("random", "none", False),
    "batch_drop": MixMode("rectangle", "none", False),
}


class MixInfo(NamedTuple):
    """What a mix did to each sample.

    Attributes:
        negatives: (N,) int64 partner of each sample (the sample its cells came from), -1 where
            no cell came from a partner (always for ``cutout`` and ``batch_drop``).
        blocks: (N, k) int64 selected block indices (row-major), highest score (or key) first;
            (N, 1) of -1 for ``batch_drop``.
        mask: (N, H, W) bool, True where the cell was replaced or zeroed.
        lam: (N,) float32 replaced or zeroed area / (H * W).
    """

    negatives: torch.Tensor
    blocks: torch.Tensor
    mask: torch.Tensor
    lam: torch.Tensor


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


def _use_triton(backend: str | None, feat: torch.Tensor, num_grid_blocks: int) -> bool:
    """Whether the Triton kernels run; "auto" picks them where they apply, "triton" insists."""
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
        from pmm_kernels.ops.feature_mix_triton import unsupported_reason

        return unsupported_reason(n, h, w, num_grid_blocks) is None

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
    from pmm_kernels.ops.feature_mix_triton import unsupported_reason

    reason = unsupported_reason(n, h, w, num_grid_blocks)
    if reason is not None:
        raise ValueError(reason)
    return True


def _triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device):
    """``torch.rand`` from ``generator`` (on its own device) or from ``device``'s default one."""
    if generator is None:
        # No generator keyword at all: torch.compile cannot trace ``generator=None`` with a
        # symbolic batch size.
        return torch.rand(shape, device=device)
    if torch.compiler.is_compiling():
        raise ValueError(
            "generator: torch.compile cannot trace draws from a torch.Generator; pass "
            "generator=None (build the layer without one) in compiled code"
        )
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _check_negatives(negatives: torch.Tensor, n: int) -> torch.Tensor:
    if torch.compiler.is_compiling():
        # Reading the range back would break the graph: check on the device instead.
        torch._assert_async(
            ((negatives >= -1) & (negatives < n)).all(), "negatives must lie in [-1, N)"
        )
    else:
        low, high = int(negatives.min()), int(negatives.max())
        if low < -1 or high >= n:
            raise ValueError(
                f"negatives must lie in [-1, {n}) for a batch of {n}, got values in [{low}, {high}]"
            )
    return negatives.to(torch.int64)


def feature_mix(
    feat: torch.Tensor,
    labels: torch.Tensor | None,
    attn: torch.Tensor | None = None,
    *,
    mode: str = "a_hard_mix",
    block_size: tuple[int, int] = (3, 2),
    num_blocks: int = 3,
    negatives: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    h_ratio: float = 0.33,
    w_ratio: float = 1.0,
    backend: Backend | None = None,
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
        num_blocks: blocks per sample, 1 <= k <= number of blocks (not used by ``batch_drop``).
        negatives: (N,) partners in [-1, N), -1 meaning "do not mix"; skips the partner draw.
            Only for the modes with a partner. Checking their range reads them on the host (one
            sync on CUDA; under ``torch.compile`` an on-device assert instead).
        generator: generator of the random draws; None uses feat's device's default generator
            (the only choice under ``torch.compile``).
        h_ratio: ``batch_drop``'s rectangle height, ``max(1, round(h_ratio * H))`` cells.
        w_ratio: ``batch_drop``'s rectangle width, ``max(1, round(w_ratio * W))`` cells.
        backend: "triton" (CUDA, or CPU under ``TRITON_INTERPRET=1``), "torch", or "auto"
            (Triton for CUDA tensors where it applies). ``None`` reads
            ``PMM_KERNELS_BACKEND``, default "auto".

    Returns:
        The (N, C, H, W) output, in ``feat``'s dtype and memory format, and a :class:`MixInfo`.

    Raises:
        TypeError: a non-tensor argument, non-floating ``feat`` or non-integer labels/negatives.
        ValueError: an unknown mode, wrong shapes, devices that differ, a bad block size, k,
            ratio or negatives, or an argument the mode does not take.

    Example:
        >>> feat = torch.randn(4, 16, 24, 8, requires_grad=True)
        >>> out, info = feature_mix(feat, None, mode="cutmix", generator=torch.Generator())
        >>> info.lam  # 3 blocks of 3x2 cells out of 24x8
        tensor([0.0938, 0.0938, 0.0938, 0.0938])
        >>> targets = mixed_targets(torch.tensor([0, 0, 1, 1]), info, num_classes=2)
    """
    feat = check.check_feat(feat)
    n, _, h, w = feat.shape
    spec = MODES.get(mode) if isinstance(mode, str) else None
    if spec is None:
        raise ValueError(f"mode must be one of {tuple(MODES)}, got {mode!r}")
    if spec.cells == "salient":
        if attn is None:
            raise ValueError(
                f"mode={mode!r} ranks blocks by saliency: pass attn, (N, C) channel weights or "
                "an (N, H, W) map (FeatureMix computes one for you)"
            )
        attn = check.check_attn(attn, feat)
    elif attn is not None:
        raise ValueError(
            f"mode={mode!r} chooses its cells at random and takes no attn, got "
            f"{check.describe(attn)}"
        )
    if labels is None:
        if spec.partner_rule == "different_label":
            raise ValueError(f"mode={mode!r} draws partners of a different label: pass labels")
        labels = torch.zeros(n, dtype=torch.int64, device=feat.device)
    labels = check.check_labels("labels", labels, n)
    block_size = check.check_int_pair("block_size", block_size, "(bh, bw)")
    rows, cols = block_grid(h, w, block_size)
    check.check_positive_int("num_blocks", num_blocks)
    if num_blocks > rows * cols and spec.cells != "rectangle":
        raise ValueError(
            f"num_blocks must be in [1, {rows * cols}] for a {h}x{w} map cut into "
            f"{block_size[0]}x{block_size[1]} blocks ({rows}x{cols} grid), got {num_blocks}"
        )
    h_ratio = check.check_ratio("h_ratio", h_ratio)
    w_ratio = check.check_ratio("w_ratio", w_ratio)
    generator = check.check_generator(generator)
    if negatives is not None:
        if spec.partner_rule == "none":
            raise ValueError(f"mode={mode!r} zeroes its cells and takes no negatives")
        negatives = check.check_labels("negatives", negatives, n)
    check.check_same_device(feat, attn=attn, labels=labels, negatives=negatives)
    if negatives is not None:
        negatives = _check_negatives(negatives, n)
    use_triton = _use_triton(backend, feat, rows * cols)

    # The draws of docs/op.md#draws, in that order.
    keys = corner = u = None
    if spec.cells == "random":
        keys = _uniform((n, rows * cols), generator, feat.device)
    elif spec.cells == "rectangle":
        block_size = batch_drop_size(h, w, h_ratio, w_ratio)
        corner = batch_drop_corner(_uniform((2,), generator, feat.device), h, w, block_size)
        num_blocks = 1
    if spec.partner_rule != "none" and negatives is None:
        u = _uniform((n,), generator, feat.device)
    out, partners, blocks, mask, lam = FeatureMixFunction.apply(
        feat,
        attn,
        keys,
        corner,
        labels,
        u,
        negatives,
        block_size,
        num_blocks,
        spec.partner_rule,
        use_triton,
    )
    return out, MixInfo(partners, blocks, mask, lam)


@overload
def a_hard_mix(
    feat: torch.Tensor,
    attn: torch.Tensor,
    labels: torch.Tensor,
    *,
    block_size: tuple[int, int] = ...,
    num_blocks: int = ...,
    negatives: torch.Tensor | None = ...,
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
    negatives: torch.Tensor | None = ...,
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
    negatives: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    return_info: bool = False,
    backend: Backend | None = None,
) -> torch.Tensor | tuple[torch.Tensor, MixInfo]:
    """Attentive feature Hard-Mix: swap each sample's most salient blocks with a negative's.

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
        num_blocks: blocks replaced per sample, 1 <= k <= number of blocks.
        negatives: (N,) partner indices in [-1, N), -1 meaning "do not mix"; skips sampling.
            Checking their range reads them on the host (one sync on CUDA).
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
        ValueError: wrong shapes, devices that differ, bad block size, k or negatives.

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
        negatives=negatives,
        generator=generator,
        backend=backend,
    )
    return (out, info) if return_info else out


def mixed_targets(
    labels: torch.Tensor, info: MixInfo | None, num_classes: int, smoothing: float = 0.0
) -> torch.Tensor:
    """Soft targets of the label-mixing modes (``a_cutmix``, ``cutmix``),
    docs/op.md#feature-mix-family.

    ``t_i = (1 - lam_i) * onehot(y_i) + lam_i * onehot(y_partner(i))``, and ``onehot(y_i)`` where
    the partner is -1; label smoothing then gives ``t * (1 - smoothing) + smoothing / classes``.
    The other modes keep their labels: pass ``info=None`` for their (smoothed) one-hot targets,
    or check ``MODES[mode].mixes_labels`` (``FeatureMix.targets`` does).

    Args:
        labels: (N,) integer class labels in [0, num_classes).
        info: the :class:`MixInfo` of the mix, or None for unmixed targets.
        num_classes: number of classes.
        smoothing: label smoothing eps in [0, 1).

    Returns:
        (N, num_classes) float32 targets on ``labels``' device; each row sums to 1. Use them with
        ``torch.nn.functional.cross_entropy(logits, targets)``.

    Example:
        >>> info = MixInfo(torch.tensor([1, -1]), torch.zeros(2, 1, dtype=torch.long),
        ...                torch.zeros(2, 2, 2, dtype=torch.bool), torch.tensor([0.25, 0.0]))
        >>> mixed_targets(torch.tensor([0, 2]), info, num_classes=3)
        tensor([[0.7500, 0.0000, 0.2500],
                [0.0000, 0.0000, 1.0000]])
    """
    labels = check.check_tensor("labels", labels)
    if labels.dim() != 1:
        raise ValueError(f"labels must have shape (N,), got {check.describe(labels)}")
    labels = check.check_labels("labels", labels, labels.shape[0])
    check.check_positive_int("num_classes", num_classes)
    if (
        isinstance(smoothing, bool)
        or not isinstance(smoothing, int | float)
        or not (0 <= smoothing < 1)
    ):
        raise ValueError(f"smoothing must be a number in [0, 1), got {smoothing!r}")
    labels = labels.long()
    targets = F.one_hot(labels, num_classes).float()
    if info is not None:
        if not isinstance(info, MixInfo):
            raise TypeError(f"info must be a MixInfo or None, got {check.describe(info)}")
        partners = info.negatives
        if partners.shape != labels.shape or info.lam.shape != labels.shape:
            raise ValueError(
                f"info is for a batch of {tuple(partners.shape)} but labels have shape "
                f"{tuple(labels.shape)}"
            )
        lam = torch.where(partners >= 0, info.lam, 0.0)[:, None]
        partner_targets = F.one_hot(labels[partners.clamp_min(0)], num_classes).float()
        targets = (1 - lam) * targets + lam * partner_targets
    return targets * (1 - smoothing) + smoothing / num_classes
