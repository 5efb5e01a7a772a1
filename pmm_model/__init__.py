"""The thin PMM network around :mod:`pmm_kernels`: models, losses, data, training and evaluation.

Example:
    >>> import pmm_model
    >>> model = pmm_model.build_model("baseline", num_classes=10, backbone="resnet18")
"""

from pmm_model.models import build_model

__all__ = ["build_model"]
