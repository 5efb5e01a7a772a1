"""pmm_kernels: fused Attentive feature Hard-Mix (A-Hard-Mix) for person re-identification.

Example:
    >>> import torch, pmm_kernels
    >>> feat = torch.randn(4, 16, 24, 8)
    >>> out = pmm_kernels.a_hard_mix(feat, torch.rand(4, 16), torch.tensor([0, 0, 1, 1]))
"""

from pmm_kernels.functional import BACKENDS, MixInfo, a_hard_mix, saliency
from pmm_kernels.modules import AHardMix

__all__ = ["BACKENDS", "AHardMix", "MixInfo", "a_hard_mix", "saliency"]
