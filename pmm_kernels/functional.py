"""Functional API: :func:`a_hard_mix` and :func:`saliency`."""

from __future__ import annotations

import importlib.util
import os
from typing import Literal, NamedTuple, overload

import torch

from pmm_kernels.ops.a_hard_mix import AHardMixFunction
from pmm_kernels.ops.reference import block_grid, saliency_torch

Backend = Literal["auto", "torch", "triton"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "triton")
BACKEND_ENV = "PMM_KERNELS_BACKEND"
_FEATURE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class MixInfo(NamedTuple):
    """What :func:`a_hard_mix` did to each sample.

    Attributes:
        negatives: (N,) int64 partner of each sample, -1 where the sample was not mixed.
        blocks: (N, k) int64 selected block indices (row-major), highest score first.
        mask: (N, H, W) bool, True where the cell was replaced (all False for partner -1).
        lam: (N,) float32 replaced area / (H * W).
    """

    negatives: torch.Tensor
    blocks: torch.Tensor
    mask: torch.Tensor
    lam: torch.Tensor


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)} on {value.device}"
    return f"{type(value).__name__} {value!r}"


def _check_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {_describe(value)}")
    return value


def _check_feat(feat: object) -> torch.Tensor:
    feat = _check_tensor("feat", feat)
    if feat.dim() != 4:
        raise ValueError(f"feat must have shape (N, C, H, W), got {_describe(feat)}")
    if feat.dtype not in _FEATURE_DTYPES:
        raise TypeError(
            f"feat must be float16, bfloat16, float32 or float64, got {_describe(feat)}"
        )
    if feat.numel() == 0:
        raise ValueError(f"feat must not be empty, got {_describe(feat)}")
    return feat


def _check_weights(name: str, weights: object, feat: torch.Tensor) -> torch.Tensor:
    weights = _check_tensor(name, weights)
    n, c = feat.shape[:2]
    if weights.shape != (n, c) or not weights.is_floating_point():
        raise ValueError(
            f"{name} must be a floating (N, C) = ({n}, {c}) tensor of channel weights for feat "
            f"of shape {tuple(feat.shape)}, got {_describe(weights)}"
        )
    return weights


def _check_labels(name: str, value: object, n: int) -> torch.Tensor:
    value = _check_tensor(name, value)
    if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {_describe(value)}")
    if value.shape != (n,):
        raise ValueError(f"{name} must have shape (N,) = ({n},), got {_describe(value)}")
    return value


def _check_same_device(feat: torch.Tensor, **tensors: torch.Tensor | None) -> None:
    for name, tensor in tensors.items():
        if tensor is not None and tensor.device != feat.device:
            raise ValueError(
                f"{name} is on {tensor.device} but feat is on {feat.device}; "
                "all tensors must be on one device"
            )


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {_describe(value)}")
    return value


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
    feat = _check_feat(feat)
    weights = _check_weights("weights", weights, feat)
    _check_same_device(feat, weights=weights)
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

    The map is cut into ``block_size`` blocks (row-major, edge blocks clipped). Each sample keeps
    its ``num_blocks`` highest-saliency blocks' positions and takes the values there, in all
    channels, from a partner of a different identity; values are copied bit-exactly. The gradient
    flows back to whichever sample each value came from. ``attn`` is a constant.

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
    feat = _check_feat(feat)
    n, c, h, w = feat.shape
    attn = _check_tensor("attn", attn)
    if attn.dim() == 2:
        attn = _check_weights("attn", attn, feat)
    elif attn.shape != (n, h, w) or not attn.is_floating_point():
        raise ValueError(
            f"attn must be floating (N, C) = ({n}, {c}) channel weights or an (N, H, W) = "
            f"({n}, {h}, {w}) saliency map for feat of shape {tuple(feat.shape)}, "
            f"got {_describe(attn)}"
        )
    labels = _check_labels("labels", labels, n)
    if (
        not isinstance(block_size, tuple | list)
        or len(block_size) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in block_size)
    ):
        raise ValueError(f"block_size must be two positive ints (bh, bw), got {block_size!r}")
    block_size = (int(block_size[0]), int(block_size[1]))
    rows, cols = block_grid(h, w, block_size)
    _check_positive_int("num_blocks", num_blocks)
    if num_blocks > rows * cols:
        raise ValueError(
            f"num_blocks must be in [1, {rows * cols}] for a {h}x{w} map cut into "
            f"{block_size[0]}x{block_size[1]} blocks ({rows}x{cols} grid), got {num_blocks}"
        )
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {_describe(generator)}")
    if negatives is not None:
        negatives = _check_labels("negatives", negatives, n)
    _check_same_device(feat, attn=attn, labels=labels, negatives=negatives)
    if negatives is not None:
        low, high = int(negatives.min()), int(negatives.max())
        if low < -1 or high >= n:
            raise ValueError(
                f"negatives must lie in [-1, {n}) for a batch of {n}, got values in "
                f"[{low}, {high}]"
            )
        negatives = negatives.to(torch.int64)

    use_triton = _use_triton(backend, feat, rows * cols)
    u = None
    if negatives is None:
        draw_device = generator.device if generator is not None else feat.device
        u = torch.rand(n, generator=generator, device=draw_device).to(feat.device)
    out, partners, blocks, mask, lam = AHardMixFunction.apply(
        feat, attn, labels, u, negatives, block_size, num_blocks, use_triton
    )
    if return_info:
        return out, MixInfo(partners, blocks, mask, lam)
    return out
