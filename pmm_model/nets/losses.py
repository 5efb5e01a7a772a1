"""Losses: batch-hard triplet, label-smoothed cross-entropy and their PMM sum over stages.

Example:
    >>> import torch
    >>> from pmm_model.nets.models import ReIDOutput
    >>> labels = torch.tensor([0, 0, 1, 1])
    >>> out = ReIDOutput(features=[torch.randn(4, 8)], logits=[torch.randn(4, 2)])
    >>> total, parts = PMMLoss()(out, labels)
    >>> sorted(parts)
    ['ce1', 'triplet1']
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pmm_model.nets.models import ReIDOutput

__all__ = ["PMMLoss", "batch_hard_triplet_loss"]


def batch_hard_triplet_loss(
    features: Tensor, labels: Tensor, margin: float | None = None
) -> Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017) with Euclidean distances.

    Each anchor is paired with its farthest positive and nearest negative in the batch.
    Anchors without a negative in the batch do not contribute.

    Args:
        features: ``(N, D)`` embeddings.
        labels: ``(N,)`` identity labels.
        margin: None for the soft margin ``softplus(d_ap - d_an)``; a number for the hinge
            ``max(0, d_ap - d_an + margin)`` (``margin_ranking_loss``).

    Returns:
        The mean loss over anchors, a scalar (0 when no anchor has a negative).

    Example:
        >>> f = torch.tensor([[0.0], [0.1], [5.0], [5.1]])
        >>> batch_hard_triplet_loss(f, torch.tensor([0, 0, 1, 1]), margin=0.3)
        tensor(0.)
    """
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(
            f"features must be (N, D) and labels (N,), got {tuple(features.shape)} "
            f"and {tuple(labels.shape)}"
        )
    features = features.float()
    # |a|^2 + |b|^2 - 2ab cancels badly in half precision: keep autocast from lowering the
    # matmul, or the hardest positive and negative are picked from rounding noise.
    with torch.autocast(features.device.type, enabled=False):
        sq = features.pow(2).sum(1)
        # Clamp before sqrt: the zero self-distance would otherwise give an infinite gradient.
        dist = (sq[:, None] + sq[None, :] - 2 * features @ features.T).clamp(min=1e-12).sqrt()
    same = labels[:, None] == labels[None, :]
    d_ap = dist.masked_fill(~same, float("-inf")).amax(1)
    d_an = dist.masked_fill(same, float("inf")).amin(1)
    valid = ~same.all(1)
    if not valid.any():
        return features.sum() * 0.0
    d_ap, d_an = d_ap[valid], d_an[valid]
    if margin is None:
        return F.softplus(d_ap - d_an).mean()
    return F.margin_ranking_loss(d_an, d_ap, torch.ones_like(d_an), margin=margin)


class PMMLoss(nn.Module):
    """Sum, with equal weights, of a triplet and a cross-entropy term for every stage.

    PMM has three stages, so six terms; the baseline's single stage gives two. A stage whose
    ``output.targets`` entry is a tensor (the label-mixing modes ``a_cutmix`` and ``cutmix``:
    labels mixed by area, from the stage's ``FeatureMix.targets``) takes its cross-entropy
    against those targets, smoothed as the labels would be, instead of the labels.

    Args:
        margin: triplet margin, None for the soft margin.
        label_smoothing: cross-entropy label smoothing (0.1 in the paper).

    Returns (from ``forward(output, labels)``):
        ``(total, parts)``: the scalar total and a dict of detached terms named
        ``triplet1``, ``ce1``, ``triplet2``, ... (1-based stage numbers).

    Example:
        >>> out = ReIDOutput(features=[torch.randn(4, 8)] * 3, logits=[torch.randn(4, 2)] * 3)
        >>> total, parts = PMMLoss()(out, torch.tensor([0, 0, 1, 1]))
        >>> len(parts)
        6
    """

    def __init__(self, margin: float | None = None, label_smoothing: float = 0.1) -> None:
        super().__init__()
        self.margin = margin
        self.label_smoothing = label_smoothing

    def forward(self, output: ReIDOutput, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        terms: dict[str, Tensor] = {}
        targets = output.targets or [None] * len(output.logits)
        stages = zip(output.features, output.logits, targets, strict=True)
        for stage, (feat, logits, mixed) in enumerate(stages, 1):
            terms[f"triplet{stage}"] = batch_hard_triplet_loss(feat, labels, self.margin)
            # Probability targets are smoothed as the labels are: t * (1 - eps) + eps / C.
            terms[f"ce{stage}"] = F.cross_entropy(
                logits.float(),
                labels if mixed is None else mixed,
                label_smoothing=self.label_smoothing,
            )
        total = torch.stack(list(terms.values())).sum()
        return total, {name: value.detach() for name, value in terms.items()}
