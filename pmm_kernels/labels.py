"""Give an inserted :class:`~pmm_kernels.FeatureMix` its batch labels.

:func:`mix_labels` and :func:`labels_from_batch` hand the labels to every layer in a model; both
find the layers from the model itself, so they work on copies (``copy.deepcopy``, pickle) and
through a ``DistributedDataParallel`` or single-device ``DataParallel`` wrapper.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from pmm_kernels import validation as check
from pmm_kernels.modules import FeatureMix

__all__ = ["DATA_PARALLEL", "BatchLabels", "feature_mix_layers", "labels_from_batch", "mix_labels"]

DATA_PARALLEL = (
    "labels are not split with the batch under nn.DataParallel over several GPUs: use "
    "DistributedDataParallel (one process per GPU)"
)


def feature_mix_layers(model: nn.Module) -> list[FeatureMix]:
    """Every :class:`~pmm_kernels.FeatureMix` in ``model``, inserted or built in."""
    return [module for module in model.modules() if isinstance(module, FeatureMix)]


def _refuse_data_parallel(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.DataParallel) and len(module.device_ids) > 1:
            raise ValueError(f"mix_labels: {DATA_PARALLEL}")


@contextmanager
def mix_labels(model: nn.Module, labels: torch.Tensor) -> Iterator[None]:
    """Give ``labels`` to every :class:`~pmm_kernels.FeatureMix` in ``model`` inside the block.

    Works on the model the layers were inserted into, on a ``copy.deepcopy`` or unpickled copy of
    it, and through ``DistributedDataParallel`` or a single-device ``DataParallel``. The labels
    are a plain attribute of each layer, never saved in ``state_dict``; the layer moves them to
    its map's device.

    Args:
        model: a model holding at least one FeatureMix.
        labels: (N,) integer labels of the batch the model is called with.

    Raises:
        ValueError: no FeatureMix in ``model``, labels not (N,), or ``nn.DataParallel`` over
            several GPUs (labels would not be split with the batch).
        TypeError: ``model`` is not an ``nn.Module`` or ``labels`` not an integer tensor.

    Example:
        >>> import torchvision
        >>> from pmm_kernels import insert_feature_mix
        >>> net = torchvision.models.resnet18(num_classes=4)
        >>> hook = insert_feature_mix(net, "layer3", FeatureMix())
        >>> with mix_labels(net, torch.tensor([0, 1, 2, 3])):
        ...     logits = net(torch.randn(4, 3, 128, 64))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {check.describe(model)}")
    labels = check.check_tensor("labels", labels)
    if labels.dim() != 1:
        raise ValueError(f"labels must have shape (N,), got {check.describe(labels)}")
    check.check_labels("labels", labels, labels.shape[0])
    _refuse_data_parallel(model)
    layers = feature_mix_layers(model)
    if not layers:
        raise ValueError(
            f"mix_labels: {type(model).__name__} holds no FeatureMix; insert one with "
            "pmm_kernels.insert_feature_mix first"
        )
    previous = [layer.labels for layer in layers]
    for layer in layers:
        layer.labels = labels
        layer.begin_forward()
    try:
        yield
    finally:
        for layer, old in zip(layers, previous, strict=True):
            layer.labels = old


class BatchLabels:
    """The hooks of :func:`labels_from_batch`; :meth:`remove` takes them out."""

    def __init__(self, model: nn.Module, key: str) -> None:
        self.key = key
        self._previous: list[torch.Tensor | None] = []
        self._handles = [
            model.register_forward_pre_hook(self._before),
            model.register_forward_hook(self._after, always_call=True),
        ]

    def _before(self, model: nn.Module, args: tuple[Any, ...]) -> None:
        if not model.training:
            return
        if getattr(model, "_is_replica", False):
            raise ValueError(f"labels_from_batch: {DATA_PARALLEL}")
        batch = args[0] if args else None
        if not isinstance(batch, Mapping) or self.key not in batch:
            got = (
                # By repr: keys of mixed types do not compare.
                f"keys [{', '.join(sorted(map(repr, batch)))}]"
                if isinstance(batch, Mapping)
                else check.describe(batch)
            )
            raise ValueError(
                f"labels_from_batch(key={self.key!r}): the model's first argument must be a "
                f"mapping holding {self.key!r}, got {got}"
            )
        layers = feature_mix_layers(model)
        self._previous = [layer.labels for layer in layers]
        for layer in layers:
            layer.labels = batch[self.key]

    def _after(self, model: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not self._previous:
            return
        for layer, old in zip(feature_mix_layers(model), self._previous, strict=True):
            layer.labels = old
        self._previous = []

    def remove(self) -> None:
        """Stop reading labels from the batch."""
        for handle in self._handles:
            handle.remove()


def labels_from_batch(model: nn.Module, key: str = "targets") -> BatchLabels:
    """Read each training batch's labels from ``model``'s first argument, a mapping, at ``key``.

    For engines that call the model with the whole batch, such as fast-reid
    (``model(batched_inputs)`` with the labels at ``"targets"``): a forward pre-hook gives
    ``batch[key]`` to every FeatureMix in the model for that forward, and a forward hook takes
    them back afterwards.

    Args:
        model: the model the engine calls, holding at least one FeatureMix.
        key: where the labels are in the batch.

    Returns:
        The hooks; ``.remove()`` takes them out.

    Raises:
        ValueError: ``model`` holds no FeatureMix; at a training forward, a first argument
            without ``key``, or ``nn.DataParallel`` over several GPUs.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {check.describe(model)}")
    if not isinstance(key, str):
        raise TypeError(f"key must be a str, got {check.describe(key)}")
    if not feature_mix_layers(model):
        raise ValueError(
            f"labels_from_batch: {type(model).__name__} holds no FeatureMix; insert one with "
            "pmm_kernels.insert_feature_mix first"
        )
    return BatchLabels(model, key)
