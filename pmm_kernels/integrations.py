"""Glue for ReID training engines that call the model without its labels.

- torchreid: its engines read the labels in ``forward_backward(data)`` (``data["pid"]``) and call
  ``self.model(imgs)``. :class:`TorchreidMixLabels` is a mixin that gives ``data["pid"]`` to the
  model's layers for that step::

      class Engine(TorchreidMixLabels, torchreid.engine.ImageSoftmaxEngine):
          pass

- fast-reid calls the model with the whole batch, the labels at ``"targets"``:
  :func:`pmm_kernels.labels_from_batch` does it with one line, no subclass.
"""

from __future__ import annotations

from typing import Any

from pmm_kernels.hooks import mix_labels


class TorchreidMixLabels:
    """Mixin for a torchreid ``Engine`` (``ImageSoftmaxEngine``, ``ImageTripletEngine``, ...).

    Runs the engine's own ``forward_backward(data)`` inside
    ``pmm_kernels.mix_labels(self.model, data[self.mix_labels_key])``, so every FeatureMix in the
    model gets the batch's identities. Put it first among the bases.

    Attributes:
        mix_labels_key: where the labels are in ``data``; torchreid's ``"pid"``.
    """

    mix_labels_key = "pid"
    model: Any

    def forward_backward(self, data: dict[str, Any]) -> Any:
        """The engine's step with the batch's labels on the model's layers."""
        with mix_labels(self.model, data[self.mix_labels_key]):
            return super().forward_backward(data)  # type: ignore[misc]
