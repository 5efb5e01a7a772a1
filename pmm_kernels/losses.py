"""Cross-entropy against integer labels or soft targets, label smoothing included.

The loss side of the label-mixing modes: :func:`pmm_kernels.mixed_targets` gives probability
targets, which torchreid's and fast-reid's cross-entropies (integer labels only) cannot take.
:func:`soft_cross_entropy` and :class:`SoftCrossEntropy` take either, and equal
``torch.nn.functional.cross_entropy`` (which they call) with the same targets.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from pmm_kernels import validation as check

Reduction = Literal["mean", "sum", "none"]


def soft_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Cross-entropy of ``logits`` against integer labels or probability targets.

    ``loss_i = -sum_c t'_ic * log_softmax(logits_i)_c`` with ``t' = t * (1 - eps) + eps / C``,
    where ``t`` is ``onehot(labels)`` or the given probabilities: exactly
    ``F.cross_entropy(logits, targets, label_smoothing=eps)``, with its inputs checked.

    Args:
        logits: (N, C) floating scores.
        targets: (N,) integer labels in [0, C), or (N, C) floating probabilities (each row
            non-negative and summing to 1), e.g. :func:`pmm_kernels.mixed_targets` unsmoothed.
        label_smoothing: eps in [0, 1), applied to either kind of target. Do not smooth twice:
            targets from ``mixed_targets(..., smoothing=eps)`` are smoothed already.
        reduction: ``"mean"`` over samples, ``"sum"``, or ``"none"`` for the (N,) losses.

    Returns:
        The loss: a scalar, or (N,) with ``reduction="none"``; float32 for half-precision logits
        under autocast, as ``F.cross_entropy``.

    Raises:
        TypeError: non-tensor arguments, non-floating logits, or targets that are neither integer
            nor floating.
        ValueError: shapes that do not fit, labels outside [0, C), probabilities that are
            negative, NaN or do not sum to 1, a bad ``label_smoothing`` or ``reduction``. The
            ranges are read back in one transfer (one sync on CUDA; an on-device assert under
            ``torch.compile``).

    Example:
        >>> logits, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
        >>> soft = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> bool(soft_cross_entropy(logits, labels) == soft_cross_entropy(logits, soft))
        True
    """
    label_smoothing = check.check_loss_args(logits, targets, label_smoothing, reduction)
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing, reduction=reduction)


class SoftCrossEntropy(nn.Module):
    """:func:`soft_cross_entropy` as a module: a drop-in criterion for integer labels or the
    soft targets of the label-mixing modes.

    Args:
        label_smoothing: eps in [0, 1).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Example:
        >>> criterion = SoftCrossEntropy(label_smoothing=0.1)
        >>> criterion(torch.zeros(2, 4), torch.tensor([0, 3]))
        tensor(1.3863)
    """

    def __init__(self, label_smoothing: float = 0.0, reduction: Reduction = "mean") -> None:
        super().__init__()
        self.label_smoothing = check.check_smoothing(label_smoothing, "label_smoothing")
        self.reduction: Reduction = check.check_choice(  # type: ignore[assignment]
            "reduction", reduction, ("mean", "sum", "none")
        )

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss of ``logits`` against ``targets`` (labels or probabilities)."""
        return soft_cross_entropy(
            logits, targets, label_smoothing=self.label_smoothing, reduction=self.reduction
        )

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}, reduction={self.reduction!r}"
