"""Glue for ReID training engines that call the model without its labels.

- torchreid: its engines read the labels in ``forward_backward(data)`` (``data["pid"]``), call
  ``self.model(imgs)`` and score the logits with ``self.compute_loss(criterion, outputs, pids)``.
  :class:`TorchreidMixLabels` is a mixin that gives ``data["pid"]`` to the model's layers for that
  step and, for the label-mixing modes, scores torchreid's cross-entropy against the mixed
  targets::

      class Engine(TorchreidMixLabels, torchreid.engine.ImageSoftmaxEngine):
          pass

- fast-reid calls the model with the whole batch, the labels at ``"targets"``:
  :func:`pmm_kernels.labels_from_batch` does it with one line, no subclass.
"""

from __future__ import annotations

from typing import Any

import torch

from pmm_kernels.hooks import feature_mix_layers, mix_labels
from pmm_kernels.losses import soft_cross_entropy


class TorchreidMixLabels:
    """Mixin for a torchreid ``Engine`` (``ImageSoftmaxEngine``, ``ImageTripletEngine``, ...).

    Runs the engine's own ``forward_backward(data)`` inside
    ``pmm_kernels.mix_labels(self.model, data[self.mix_labels_key])``, so every FeatureMix in the
    model gets the batch's identities. Where a layer mixes labels (``a_cutmix``, ``cutmix``),
    ``compute_loss`` scores torchreid's ``CrossEntropyLoss`` (a criterion with ``num_classes``
    and ``eps``) against that layer's :meth:`~pmm_kernels.FeatureMix.targets` instead of the
    integer labels; other criteria (the triplet loss) keep the labels. Put it first among the
    bases.

    Attributes:
        mix_labels_key: where the labels are in ``data``; torchreid's ``"pid"``.
    """

    mix_labels_key = "pid"
    model: Any

    def forward_backward(self, data: dict[str, Any]) -> Any:
        """The engine's step with the batch's labels on the model's layers."""
        with mix_labels(self.model, data[self.mix_labels_key]):
            return super().forward_backward(data)  # type: ignore[misc]

    def compute_loss(self, criterion: Any, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        """torchreid's ``compute_loss``, with mixed targets for its cross-entropy."""
        mixing = [
            layer
            for layer in feature_mix_layers(self.model)
            if layer.spec.mixes_labels and layer.training
        ]
        if not mixing or not (hasattr(criterion, "num_classes") and hasattr(criterion, "eps")):
            return super().compute_loss(criterion, outputs, targets)  # type: ignore[misc]
        if len(mixing) > 1:
            raise ValueError(
                f"{len(mixing)} FeatureMix layers mix labels: the loss can follow one of them"
            )
        soft = mixing[0].targets(targets, criterion.num_classes)
        # torchreid's DeepSupervision: the mean loss over a tuple of outputs.
        heads = outputs if isinstance(outputs, tuple | list) else [outputs]
        losses = [soft_cross_entropy(x, soft, label_smoothing=criterion.eps) for x in heads]
        return torch.stack(losses).mean()
