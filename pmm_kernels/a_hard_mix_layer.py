"""The paper's layer: :class:`AHardMix`, a :class:`~pmm_kernels.modules.FeatureMix` in
``a_hard_mix`` mode called with the op's argument order."""

from __future__ import annotations

import torch
from torch import nn

from pmm_kernels.modules import FeatureMix
from pmm_kernels.ops.feature_mix import Backend

__all__ = ["AHardMix"]


class AHardMix(FeatureMix):
    """:class:`FeatureMix` in ``a_hard_mix`` mode, called like :func:`pmm_kernels.a_hard_mix`.

    Its positional order is the op's, ``(feat, attn, labels)``, where :class:`FeatureMix` takes
    ``(feat, labels, attn)`` because its ``attn`` is optional and most modes take none. Both
    accept ``labels=`` and ``attn=`` as keywords, so code written for any :class:`FeatureMix`
    calls it with keywords (:mod:`pmm_kernels.hooks` does not call ``forward`` at all).

    Example:
        >>> mix = AHardMix(block_size=(3, 2), num_blocks=3)
        >>> feat = torch.randn(4, 16, 24, 8)
        >>> out = mix(feat, torch.rand(4, 16), torch.tensor([0, 0, 1, 1]))
        >>> mix.eval()(feat, torch.rand(4, 16), torch.tensor([0, 0, 1, 1])) is feat
        True
    """

    def __init__(
        self,
        block_size: tuple[int, int] | None = None,
        num_blocks: int = 3,
        *,
        grid: tuple[int, int] | None = None,
        classifier: nn.Linear | None = None,
        generator: torch.Generator | None = None,
        backend: Backend | None = None,
    ) -> None:
        super().__init__(
            "a_hard_mix",
            grid=grid,
            block_size=block_size,
            num_blocks=num_blocks,
            classifier=classifier,
            generator=generator,
            backend=backend,
        )

    def forward(  # type: ignore[override]  # the op's positional order, see the class docstring
        self,
        feat: torch.Tensor,
        attn: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        partners: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mixed ``feat`` in training mode, ``feat`` itself in eval mode."""
        return super().forward(feat, labels, attn, partners=partners)
