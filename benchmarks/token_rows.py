"""The layer's rows on ViT-B/16 ReID tokens, shared by ``test_tokens_bench.py`` and
``gpu_check.py`` (benchmarks import no test module)."""

from __future__ import annotations

from collections.abc import Callable

import torch

import pmm_kernels
from pmm_kernels.tokens import TokenGrid

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
N, GRID, C = 64, TokenGrid(16, 8, 1), 768


def token_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(N, GRID.prefix + GRID.height * GRID.width, C, generator=generator)
    return tokens.to(DEVICE), (torch.arange(N) // 4).to(DEVICE)


def token_call(passes: str) -> tuple[torch.Tensor, Callable[[], object]]:
    """The benchmarked call on fresh inputs: the layer's forward or forward + backward."""
    tokens, labels = token_inputs()
    layer = pmm_kernels.FeatureMix("a_hard_mix", token_grid=GRID)
    if passes == "forward":
        return tokens, lambda: layer(tokens, labels)
    leaf = tokens.detach().requires_grad_()
    grad_out = torch.randn_like(tokens)
    return tokens, lambda: torch.autograd.grad(layer(leaf, labels), leaf, grad_out)
