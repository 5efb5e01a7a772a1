"""The a_hard_mix op run beside its loop oracle, for the PyTorch path's and the kernels' tests."""

from __future__ import annotations

import torch

from pmm_kernels import MixInfo, a_hard_mix

from .a_hard_mix import OracleResult, oracle_backward, oracle_forward


def assert_matches_oracle(
    feat: torch.Tensor, out: torch.Tensor, info: MixInfo, expected: OracleResult
) -> None:
    """The op's output and info equal the oracle's exactly, with the contract's dtypes."""
    assert out.dtype == feat.dtype and out.shape == feat.shape and out.device == feat.device
    assert torch.equal(out.detach().cpu(), expected.out)
    assert info.partners.tolist() == expected.partners
    assert info.blocks.tolist() == expected.blocks
    assert torch.equal(info.mask.cpu(), expected.mask)
    assert torch.equal(info.lam.cpu(), expected.lam)
    assert info.partners.dtype == info.blocks.dtype == torch.int64 and info.blocks.is_contiguous()
    assert info.mask.dtype == torch.bool and info.lam.dtype == torch.float32


def check_against_oracle(
    feat, attn, labels, *, block_size, num_blocks, generator_seed=0, partners=None, backend="torch"
):
    """Run the op and the oracle on the same inputs; assert out, info and grad agree exactly."""
    feat = feat.detach().requires_grad_()
    u = torch.rand(feat.shape[0], generator=torch.Generator().manual_seed(generator_seed))
    out, info = a_hard_mix(
        feat,
        attn,
        labels,
        block_size=block_size,
        num_blocks=num_blocks,
        partners=partners,
        generator=torch.Generator().manual_seed(generator_seed),
        return_info=True,
        backend=backend,
    )
    expected = oracle_forward(
        feat.cpu(),
        attn.cpu(),
        labels.cpu(),
        block_size=block_size,
        num_blocks=num_blocks,
        u=u,
        partners=None if partners is None else partners.cpu(),
    )
    assert_matches_oracle(feat, out, info, expected)

    grad_out = torch.randn(feat.shape, generator=torch.Generator().manual_seed(1))
    grad_out = grad_out.to(device=feat.device, dtype=feat.dtype)
    (grad,) = torch.autograd.grad(out, feat, grad_out)
    assert torch.equal(
        grad.cpu(), oracle_backward(grad_out.cpu(), expected.partners, expected.mask)
    )
    return out, info
