"""The layer's rows on ViT-B/16 ReID tokens, shared by ``test_tokens_bench.py`` and
``gpu_check.py`` (benchmarks import no test module)."""

from __future__ import annotations

from collections.abc import Callable

import torch

import pmm_kernels
from pmm_kernels.ops import feature_mix
from pmm_kernels.ops.plan import CellSource, MixPlan
from pmm_kernels.tokens import TokenGrid, token_norm

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
N, GRID, C = 64, TokenGrid(16, 8, 1), 768


def token_inputs(channels: int = C) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(N, GRID.prefix + GRID.height * GRID.width, channels, generator=generator)
    return tokens.to(DEVICE), (torch.arange(N) // 4).to(DEVICE)


# The saliency the layer ranks blocks by: its label-free default, the token norm (one more read
# of the patch tokens), or a map given to it (as ClsAttention or classifier= would compute
# elsewhere), which leaves the op's own passes.
SALIENCIES = ("token_norm", "given")


def token_call(
    passes: str, saliency: str = "token_norm", channels: int = C
) -> tuple[torch.Tensor, Callable[[], object]]:
    """The benchmarked call on fresh inputs: the layer's forward or forward + backward."""
    tokens, labels = token_inputs(channels)
    layer = pmm_kernels.FeatureMix("a_hard_mix", token_grid=GRID)
    attn = token_norm(GRID.patches(tokens)) if saliency == "given" else None
    if passes == "forward":
        return tokens, lambda: layer(tokens, labels, attn)
    leaf = tokens.detach().requires_grad_()
    grad_out = torch.randn_like(tokens)
    return tokens, lambda: torch.autograd.grad(layer(leaf, labels, attn), leaf, grad_out)


def op_call(channels: int = C) -> Callable[[], object]:
    """The op that the layer calls, alone: :func:`pmm_kernels.feature_mix` with the layer's
    blocks and a saliency map given (its checks, draws, planning and mix), forward."""
    tokens, labels = token_inputs(channels)
    attn = token_norm(GRID.patches(tokens))
    block_size, num_blocks = _layer_blocks()
    return lambda: pmm_kernels.feature_mix(
        tokens,
        labels,
        attn,
        mode="a_hard_mix",
        block_size=block_size,
        num_blocks=num_blocks,
        token_grid=GRID,
    )


def _layer_blocks() -> tuple[tuple[int, int], int]:
    """The block size and block count that the rows' layer uses on the token grid."""
    layer = pmm_kernels.FeatureMix("a_hard_mix", token_grid=GRID)
    return (
        layer.block_size_for(GRID.height, GRID.width),
        layer.num_blocks_for(GRID.height, GRID.width),
    )


def op_body(
    saliency: str = "given", channels: int = C
) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """The forward op's Python body on the PyTorch path, as ``(tokens, forward)``: the layer's
    plan for fixed draws, the token norm computed in ``forward`` with ``saliency="token_norm"``,
    and none of the checks, draws, custom-op dispatch or autograd around the op."""
    tokens, labels = token_inputs(channels)
    u = torch.rand(N, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    block_size, num_blocks = _layer_blocks()
    given = token_norm(GRID.patches(tokens))
    # The custom op's Python function, which torch.compile can trace (the op is opaque to it).
    body = feature_mix.feature_mix_forward._init_fn

    def forward(x: torch.Tensor) -> torch.Tensor:
        attn = token_norm(GRID.patches(x)) if saliency == "token_norm" else given
        plan = MixPlan(
            CellSource.saliency(attn), labels, u, None, block_size, num_blocks, "different_label"
        )
        return body(x, *plan.op_args(), False, [GRID.height, GRID.width, GRID.prefix])[0]

    return tokens, forward


def compiled_path_call(saliency: str) -> tuple[torch.Tensor, Callable[[], object], torch.Tensor]:
    """:func:`op_body` compiled by ``torch.compile`` (on CPU, inductor's C++ loops: the fused
    program PyTorch offers in place of eager ops), as ``(tokens, call, expected)``:
    ``expected`` is the eager body's output, which the compiled call must equal."""
    tokens, forward = op_body(saliency)
    compiled = torch.compile(forward, dynamic=False)
    return tokens, lambda: compiled(tokens), forward(tokens)
