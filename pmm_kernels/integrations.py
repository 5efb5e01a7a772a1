"""Glue for ReID training engines that call the model without its labels.

- torchreid: its engines read the labels in ``forward_backward(data)`` (``data["pid"]``), call
  ``self.model(imgs)`` and score the logits with ``self.compute_loss(criterion, outputs, pids)``.
  :class:`TorchreidMixLabels` is a mixin that gives ``data["pid"]`` to the model's layers for that
  step and, for the label-mixing modes, scores torchreid's cross-entropy against the mixed
  targets::

      class Engine(TorchreidMixLabels, torchreid.engine.ImageSoftmaxEngine):
          pass

- fast-reid calls the model with the whole batch, the labels at ``"targets"``:
  :func:`pmm_kernels.labels_from_batch` does it with one line, no subclass. For the
  label-mixing modes, :class:`FastreidMixedTargets` makes a ``Baseline`` meta-architecture score
  its cross-entropy against the mixed targets::

      @META_ARCH_REGISTRY.register()
      class MixedBaseline(FastreidMixedTargets, Baseline):
          pass  # then cfg.MODEL.META_ARCHITECTURE = "MixedBaseline"

Both are reachable as ``pmm_kernels.integrations`` after ``import pmm_kernels``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

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
        layer = _label_mixing_layer(self.model)
        if layer is None or not (hasattr(criterion, "num_classes") and hasattr(criterion, "eps")):
            return super().compute_loss(criterion, outputs, targets)  # type: ignore[misc]
        soft = layer.targets(targets, criterion.num_classes)
        # torchreid's DeepSupervision: the mean loss over a tuple of outputs.
        heads = outputs if isinstance(outputs, tuple | list) else [outputs]
        losses = [soft_cross_entropy(x, soft, label_smoothing=criterion.eps) for x in heads]
        return torch.stack(losses).mean()


def _label_mixing_layer(model: Any) -> Any:
    """The one training FeatureMix of ``model`` that mixes labels, or None."""
    mixing = [
        layer for layer in feature_mix_layers(model) if layer.spec.mixes_labels and layer.training
    ]
    if len(mixing) > 1:
        raise ValueError(
            f"{len(mixing)} FeatureMix layers mix labels: the loss can follow one of them"
        )
    return mixing[0] if mixing else None


class FastreidMixedTargets:
    """Mixin for fast-reid's ``Baseline`` meta-architecture (Baseline, AGW and SBS configs).

    ``Baseline.losses`` scores its cross-entropy against the integer labels, which drops the
    label mix of ``a_cutmix``/``cutmix``. With this mixin first among the bases, ``loss_cls`` is
    fast-reid's label-smoothed cross-entropy (``MODEL.LOSSES.CE.EPSILON`` spread over the other
    classes, times ``CE.SCALE``) of the layer's :meth:`~pmm_kernels.FeatureMix.targets` instead:
    the same value as fast-reid's where no label was mixed. The other losses keep the labels.

    Raises:
        ValueError: fast-reid's adaptive smoothing (``CE.EPSILON < 0``), which has no form for
            mixed targets, while a layer mixes labels.
    """

    loss_kwargs: dict[str, Any]

    def losses(self, outputs: dict[str, Any], gt_labels: torch.Tensor) -> dict[str, Any]:
        """fast-reid's ``losses``, with ``loss_cls`` on the mixed targets."""
        loss_dict = super().losses(outputs, gt_labels)  # type: ignore[misc]
        layer = _label_mixing_layer(self)
        if layer is None or "loss_cls" not in loss_dict:
            return loss_dict
        ce = self.loss_kwargs["ce"]
        eps = float(ce["eps"])
        if eps < 0:
            raise ValueError(
                f"MODEL.LOSSES.CE.EPSILON={eps}: fast-reid's adaptive label smoothing has no form "
                "for mixed targets; set it >= 0"
            )
        logits = outputs["cls_outputs"]
        num_classes = logits.shape[1]
        mixed = layer.targets(gt_labels, num_classes).to(logits.device)
        # fast-reid's smoothing: 1 - eps where the target is, eps / (C - 1) over the others.
        soft = mixed * (1 - eps) + (1 - mixed) * eps / (num_classes - 1)
        per_sample = -(soft * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
        loss_dict["loss_cls"] = (
            per_sample.sum() / max(int((per_sample != 0).sum()), 1) * ce["scale"]
        )
        return loss_dict
