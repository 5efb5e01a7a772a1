"""pmm_kernels: the PMM paper's feature-mix family (A-Hard-Mix and its ablation modes) on one core.

Example:
    >>> import torch, pmm_kernels
    >>> feat = torch.randn(4, 16, 24, 8)
    >>> out = pmm_kernels.a_hard_mix(feat, torch.rand(4, 16), torch.tensor([0, 0, 1, 1]))
    >>> out, info = pmm_kernels.feature_mix(feat, None, mode="cutout")
"""

from importlib.metadata import PackageNotFoundError, version

from pmm_kernels import integrations
from pmm_kernels.a_hard_mix_layer import AHardMix
from pmm_kernels.functional import a_hard_mix, feature_mix, mixed_targets, saliency
from pmm_kernels.hooks import FeatureMixHook, insert_feature_mix
from pmm_kernels.labels import BatchLabels, feature_mix_layers, labels_from_batch, mix_labels
from pmm_kernels.losses import SoftCrossEntropy, soft_cross_entropy
from pmm_kernels.modes import MODES, MixInfo, MixMode
from pmm_kernels.modules import FeatureMix
from pmm_kernels.ops.feature_mix import BACKENDS
from pmm_kernels.ops.utils import block_grid

try:
    # The distribution is "pmm" (pyproject.toml); it ships pmm_kernels and pmm_model.
    __version__ = version("pmm")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "BACKENDS",
    "MODES",
    "AHardMix",
    "BatchLabels",
    "FeatureMix",
    "FeatureMixHook",
    "MixInfo",
    "MixMode",
    "SoftCrossEntropy",
    "a_hard_mix",
    "block_grid",
    "feature_mix",
    "feature_mix_layers",
    "insert_feature_mix",
    "integrations",
    "labels_from_batch",
    "mix_labels",
    "mixed_targets",
    "saliency",
    "soft_cross_entropy",
]
