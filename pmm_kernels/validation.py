"""Argument checks shared by the functional ops, the layers and the models.

Each check raises a ``TypeError`` or ``ValueError`` that names the argument and what it got, and
returns the value in its normalised form.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch

from pmm_kernels.modes import MODES, MixInfo, MixMode
from pmm_kernels.ops.utils import block_grid

FEATURE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def describe(value: object) -> str:
    """A short description of a value for error messages: shapes, never tensor values.

    Example:
        >>> print(describe((torch.zeros(2, 3), {"s": torch.ones(1)})))
        a tuple of 2: (a torch.float32 tensor of shape (2, 3) on cpu, a dict with keys ['s'])
    """
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)} on {value.device}"
    if isinstance(value, tuple | list):
        shown = ", ".join(_describe_short(item) for item in value[:4])
        more = ", ..." if len(value) > 4 else ""
        return f"a {type(value).__name__} of {len(value)}: ({shown}{more})"
    if isinstance(value, dict):
        return f"a dict with keys {[str(key) for key in list(value)[:8]]}"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 80 else text[:77] + '...'}"


def _describe_short(value: object) -> str:
    """Like :func:`describe`, one level deep only: nested containers by their size."""
    if isinstance(value, tuple | list):
        return f"a {type(value).__name__} of {len(value)}"
    return describe(value)


def check_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {describe(value)}")
    return value


def check_feat(feat: object) -> torch.Tensor:
    feat = check_tensor("feat", feat)
    if feat.dim() != 4:
        raise ValueError(f"feat must have shape (N, C, H, W), got {describe(feat)}")
    if feat.dtype not in FEATURE_DTYPES:
        raise TypeError(f"feat must be float16, bfloat16, float32 or float64, got {describe(feat)}")
    if feat.numel() == 0:
        raise ValueError(f"feat must not be empty, got {describe(feat)}")
    return feat


def check_weights(name: str, weights: object, feat: torch.Tensor) -> torch.Tensor:
    weights = check_tensor(name, weights)
    n, c = feat.shape[:2]
    if weights.shape != (n, c) or not weights.is_floating_point():
        raise ValueError(
            f"{name} must be a floating (N, C) = ({n}, {c}) tensor of channel weights for feat "
            f"of shape {tuple(feat.shape)}, got {describe(weights)}"
        )
    return weights


def check_attn(attn: object, feat: torch.Tensor) -> torch.Tensor:
    """(N, C) channel weights or an (N, H, W) saliency map."""
    attn = check_tensor("attn", attn)
    n, c, h, w = feat.shape
    if attn.dim() == 2:
        return check_weights("attn", attn, feat)
    if attn.shape != (n, h, w) or not attn.is_floating_point():
        raise ValueError(
            f"attn must be floating (N, C) = ({n}, {c}) channel weights or an (N, H, W) = "
            f"({n}, {h}, {w}) saliency map for feat of shape {tuple(feat.shape)}, "
            f"got {describe(attn)}"
        )
    return attn


def check_labels(name: str, value: object, n: int) -> torch.Tensor:
    value = check_tensor(name, value)
    if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {describe(value)}")
    if value.shape != (n,):
        raise ValueError(f"{name} must have shape (N,) = ({n},), got {describe(value)}")
    return value


def check_same_device(feat: torch.Tensor, **tensors: torch.Tensor | None) -> None:
    for name, tensor in tensors.items():
        if tensor is not None and tensor.device != feat.device:
            raise ValueError(
                f"{name} is on {tensor.device} but feat is on {feat.device}; "
                "all tensors must be on one device"
            )


# The largest block side: larger than any feature map, so only a mistake (pixels for cells,
# a typo) exceeds it.
MAX_BLOCK_SIDE = 65536


def check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {describe(value)}")
    return value


def check_int_pair(name: str, value: object, what: str = "") -> tuple[int, int]:
    """Two positive ints given as a tuple or list, e.g. ``block_size=(bh, bw)``; ``what`` names
    them in the error."""
    if (
        not isinstance(value, tuple | list)
        or len(value) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)
    ):
        raise ValueError(
            f"{name} must be two positive ints{' ' + what if what else ''}, got {value!r}"
        )
    return int(value[0]), int(value[1])


def check_block_size(value: object) -> tuple[int, int]:
    """A block size ``(bh, bw)``: two ints in ``[1, MAX_BLOCK_SIDE]``."""
    block_size = check_int_pair("block_size", value, "(bh, bw)")
    if max(block_size) > MAX_BLOCK_SIDE:
        raise ValueError(
            f"block_size must be two ints in [1, {MAX_BLOCK_SIDE}] (cells of the feature map), "
            f"got {block_size!r}"
        )
    return block_size


def check_ratio(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ValueError(f"{name} must be a number in (0, 1], got {describe(value)}")
    return float(value)


def check_generator(generator: object) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {describe(generator)}")
    return generator


def check_choice(name: str, value: object, choices: Iterable[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_partners(partners: torch.Tensor, n: int) -> torch.Tensor:
    """Partners in [-1, N) as int64 (:func:`check_ranges`: one read-back, or on the device
    under ``torch.compile``)."""
    check_ranges([("partners", partners, -1, n - 1, f"[-1, {n}) for a batch of {n}")])
    return partners.to(torch.int64)


class MixArgs(NamedTuple):
    """:func:`pmm_kernels.feature_mix`'s arguments, checked and normalised."""

    spec: MixMode
    attn: torch.Tensor | None
    labels: torch.Tensor
    block_size: tuple[int, int]
    grid: tuple[int, int]
    h_ratio: float
    w_ratio: float
    generator: torch.Generator | None
    partners: torch.Tensor | None


def check_mix_args(
    feat: torch.Tensor,
    labels: object,
    attn: object,
    *,
    mode: object,
    block_size: object,
    num_blocks: object,
    partners: object,
    generator: object,
    h_ratio: object,
    w_ratio: object,
) -> MixArgs:
    """Check :func:`pmm_kernels.feature_mix`'s arguments against ``feat`` (already checked) and
    the mode; labels default to zeros where the mode needs none."""
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
        attn = check_attn(attn, feat)
    elif attn is not None:
        raise ValueError(
            f"mode={mode!r} chooses its cells at random and takes no attn, got {describe(attn)}"
        )
    if labels is None:
        if spec.partner_rule == "different_label":
            raise ValueError(f"mode={mode!r} draws partners of a different label: pass labels")
        labels = torch.zeros(n, dtype=torch.int64, device=feat.device)
    labels = check_labels("labels", labels, n)
    block_size = check_block_size(block_size)
    # A block larger than the map is one edge block, clipped to the map: clipping it here
    # first changes no output and keeps the op's per-block buffers within the map.
    block_size = (min(block_size[0], h), min(block_size[1], w))
    rows, cols = block_grid(h, w, block_size)
    num_blocks = check_positive_int("num_blocks", num_blocks)
    if num_blocks > rows * cols and spec.cells != "rectangle":
        raise ValueError(
            f"num_blocks must be in [1, {rows * cols}] for a {h}x{w} map cut into "
            f"{block_size[0]}x{block_size[1]} blocks ({rows}x{cols} grid), got {num_blocks}"
        )
    h_ratio = check_ratio("h_ratio", h_ratio)
    w_ratio = check_ratio("w_ratio", w_ratio)
    generator = check_generator(generator)
    if partners is not None:
        if spec.partner_rule == "none":
            raise ValueError(f"mode={mode!r} zeroes its cells and takes no partners")
        partners = check_labels("partners", partners, n)
    check_same_device(feat, attn=attn, labels=labels, partners=partners)
    if partners is not None:
        partners = check_partners(partners, n)
    return MixArgs(
        spec, attn, labels, block_size, (rows, cols), h_ratio, w_ratio, generator, partners
    )


def check_smoothing(smoothing: object, name: str = "smoothing") -> float:
    """Label smoothing eps in [0, 1)."""
    if (
        isinstance(smoothing, bool)
        or not isinstance(smoothing, int | float)
        or not (0 <= smoothing < 1)
    ):
        raise ValueError(f"{name} must be a number in [0, 1), got {smoothing!r}")
    return float(smoothing)


def check_target_args(
    labels: object, info: object, num_classes: object, smoothing: object
) -> tuple[torch.Tensor, float]:
    """Check :func:`pmm_kernels.mixed_targets`' arguments; returns int64 labels and smoothing.

    The ranges (labels in [0, num_classes), ``info``'s partners in [-1, N), ``lam`` and
    ``label_lam`` in [0, 1], no NaN) are read back on the host in one transfer: one sync on
    CUDA, in loss code, where a training step reads its loss anyway. Under ``torch.compile``,
    where a read-back would break the graph, they are asserted on the device instead.
    """
    labels = check_tensor("labels", labels)
    if labels.dim() != 1:
        raise ValueError(f"labels must have shape (N,), got {describe(labels)}")
    n = labels.shape[0]
    labels = check_labels("labels", labels, n).long()
    num_classes = check_positive_int("num_classes", num_classes)
    smoothing = check_smoothing(smoothing)
    # (name, values, lowest and highest allowed, the range in words)
    ranges = [("labels", labels, 0, num_classes - 1, f"[0, num_classes) = [0, {num_classes})")]
    if info is not None:
        if not isinstance(info, MixInfo):
            raise TypeError(f"info must be a MixInfo or None, got {describe(info)}")
        if info.partners.shape != labels.shape or info.lam.shape != labels.shape:
            raise ValueError(
                f"info is for a batch of {tuple(info.partners.shape)} but labels have shape "
                f"{tuple(labels.shape)}"
            )
        check_labels("info.partners", info.partners, n)
        ranges.append(("info.partners", info.partners, -1, n - 1, f"[-1, {n}) for a batch of {n}"))
        for name in ("lam", "label_lam"):
            value = getattr(info, name)
            if value is None:
                continue
            if value.shape != (n,) or not value.is_floating_point():
                raise ValueError(
                    f"info.{name} must be a floating (N,) = ({n},) tensor, got {describe(value)}"
                )
            ranges.append((f"info.{name}", value, 0, 1, "[0, 1]"))
    if n > 0:
        check_ranges(ranges)
    return labels, smoothing


Range = tuple[str, torch.Tensor, float, float, str]


def check_ranges(ranges: Sequence[Range]) -> None:
    """Each ``(name, values, low, high, words)``: every value in [low, high], none NaN, else a
    ``ValueError`` saying ``name must lie in words``.

    All bounds come back to the host in one transfer (one sync on CUDA); under
    ``torch.compile``, where a read-back would break the graph, each range is asserted on the
    device instead. The tensors must not be empty.
    """
    if torch.compiler.is_compiling():
        for name, values, low, high, _ in ranges:
            # NaN fails both comparisons.
            torch._assert_async(((values >= low) & (values <= high)).all(), f"{name} out of range")
        return
    bounds = torch.stack([b.double() for r in ranges for b in torch.aminmax(r[1])]).tolist()
    for (name, _, low, high, words), got_low, got_high in zip(
        ranges, bounds[::2], bounds[1::2], strict=True
    ):
        if math.isnan(got_low) or math.isnan(got_high):
            raise ValueError(f"{name} must lie in {words}, got NaN")
        if got_low < low or got_high > high:
            raise ValueError(
                f"{name} must lie in {words}, got values in [{got_low:g}, {got_high:g}]"
            )


# Rows of probability targets may miss 1 by float32 rounding (or bfloat16's, 2**-8).
ROW_SUM_TOLERANCE = 1e-2


def check_loss_args(
    logits: object, targets: object, label_smoothing: object, reduction: object
) -> float:
    """Check :func:`pmm_kernels.soft_cross_entropy`'s arguments; returns the smoothing.

    Labels must lie in [0, C); probabilities in [0, 1] with rows summing to 1 (within
    :data:`ROW_SUM_TOLERANCE`), NaN rejected: read back in one transfer (:func:`check_ranges`).
    """
    logits = check_tensor("logits", logits)
    targets = check_tensor("targets", targets)
    if logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be a floating (N, C) tensor, got {describe(logits)}")
    n, c = logits.shape
    label_smoothing = check_smoothing(label_smoothing, "label_smoothing")
    check_choice("reduction", reduction, ("mean", "sum", "none"))
    if targets.device != logits.device:
        raise ValueError(
            f"targets are on {targets.device} but logits on {logits.device}; "
            "both must be on one device"
        )
    if targets.is_floating_point():
        if targets.shape != (n, c):
            raise ValueError(
                f"targets must be (N,) integer labels or (N, C) = ({n}, {c}) probabilities, "
                f"got {describe(targets)}"
            )
        ranges: list[Range] = [
            ("targets", targets, 0, 1, "[0, 1] (probabilities)"),
            (
                "the row sums of targets",
                targets.sum(dim=1),
                1 - ROW_SUM_TOLERANCE,
                1 + ROW_SUM_TOLERANCE,
                f"1 ± {ROW_SUM_TOLERANCE:g} (each row is a probability distribution)",
            ),
        ]
    else:
        check_labels("targets", targets, n)
        ranges = [("targets", targets, 0, c - 1, f"[0, C) = [0, {c})")]
    if n > 0:
        check_ranges(ranges)
    return label_smoothing
