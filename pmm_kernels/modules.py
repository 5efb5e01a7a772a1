"""Drop-in layers."""

from __future__ import annotations

import torch
from torch import nn

from pmm_kernels.functional import a_hard_mix


class AHardMix(nn.Module):
    """A-Hard-Mix as a layer: mixes in training mode, passes ``feat`` through in eval mode.

    Args:
        block_size: block height and width in feature-map cells.
        num_blocks: blocks replaced per sample.

    Example:
        >>> mix = AHardMix(block_size=(3, 2), num_blocks=3)
        >>> feat = torch.randn(4, 16, 24, 8)
        >>> out = mix(feat, torch.rand(4, 16), torch.tensor([0, 0, 1, 1]))
        >>> mix.eval()(feat, torch.rand(4, 16), torch.tensor([0, 0, 1, 1])) is feat
        True
    """

    def __init__(self, block_size: tuple[int, int] = (3, 2), num_blocks: int = 3) -> None:
        super().__init__()
        self.block_size = tuple(block_size)
        self.num_blocks = num_blocks

    def forward(
        self, feat: torch.Tensor, attn: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        if not self.training:
            return feat
        return a_hard_mix(
            feat, attn, labels, block_size=self.block_size, num_blocks=self.num_blocks
        )

    def extra_repr(self) -> str:
        return f"block_size={self.block_size}, num_blocks={self.num_blocks}"
