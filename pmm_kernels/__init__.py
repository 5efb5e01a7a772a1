"""pmm_kernels: the PMM paper's feature-mix family (A-Hard-Mix and its ablation modes) on one core.

Example:
    >>> import torch, pmm_kernels
    >>> feat = torch.randn(4, 16, 24, 8)
    >>> out = pmm_kernels.a_hard_mix(feat, torch.rand(4, 16), torch.tensor([0, 0, 1, 1]))
    >>> out, info = pmm_kernels.feature_mix(feat, None, mode="cutout")
"""

from pmm_kernels.functional import (
    BACKENDS,
    MODES,
    MixInfo,
    MixMode,
    a_hard_mix,
    feature_mix,
    mixed_targets,
    saliency,
)
from pmm_kernels.hooks import (
    BatchLabels,
    FeatureMixHook,
    feature_mix_layers,
    insert_feature_mix,
    labels_from_batch,
    mix_labels,
)
from pmm_kernels.modules import AHardMix, FeatureMix

__all__ = [
    "BACKENDS",
    "MODES",
    "AHardMix",
    "BatchLabels",
    "FeatureMix",
    "FeatureMixHook",
    "MixInfo",
    "MixMode",
    "a_hard_mix",
    "feature_mix",
    "feature_mix_layers",
    "insert_feature_mix",
    "labels_from_batch",
    "mix_labels",
    "mixed_targets",
    "saliency",
]
