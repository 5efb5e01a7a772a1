"""Divergence: when a training step's loss or gradients say that the run has blown up.

The engine asks :class:`LossWatch` about every step's loss before the step is applied, and
:func:`gradients_finite` about its gradients, and stops the run as diverged on either.

Example:
    >>> watch = LossWatch()
    >>> watch.problem(7.6)  # no history yet: only a non-finite loss counts
    ''
    >>> watch.record(7.6)
    >>> watch.problem(2.2e11)
    'the loss exploded (2.2e+11, over 1000 x the median 7.6 of the last 1 steps)'
"""

from __future__ import annotations

import math
import statistics
from collections import deque

import torch
from torch import nn

__all__ = ["EXPLOSION", "LOSS_HISTORY", "LossWatch", "gradients_finite"]

# A step loss above EXPLOSION x max(1, median of the last LOSS_HISTORY finite step losses). A
# sane re-identification loss stays within a few units, and a factor of 1000 leaves room for any
# honest spike; the floor of 1 keeps a loss that has fallen near 0 from tripping it.
EXPLOSION = 1e3
LOSS_HISTORY = 50


class LossWatch:
    """One process's recent step losses, and whether a new one shows divergence."""

    def __init__(self) -> None:
        self.recent: deque[float] = deque(maxlen=LOSS_HISTORY)

    def problem(self, value: float) -> str:
        """Why ``value`` shows divergence, or ``""``: not finite, or an explosion."""
        if not math.isfinite(value):
            return f"the loss is not finite ({value})"
        if self.recent:
            median = statistics.median(self.recent)
            if value > EXPLOSION * max(median, 1.0):
                return (
                    f"the loss exploded ({value:.4g}, over {EXPLOSION:g} x the median "
                    f"{median:.4g} of the last {len(self.recent)} steps)"
                )
        return ""

    def record(self, value: float) -> None:
        """Add a step's loss that :meth:`problem` passed."""
        self.recent.append(value)


def gradients_finite(model: nn.Module) -> bool:
    """Whether every gradient of ``model`` is finite (one reduction; True without gradients)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))
