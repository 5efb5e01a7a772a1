"""What only a CUDA device can show (marker ``gpu``; skipped elsewhere, run by ``make
gpu-check``): the kernels compiled, not interpreted, give the PyTorch path's result on the CPU."""

from __future__ import annotations

import os

import pytest
import torch

import pmm_kernels

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("attn_form", ["weights", "map"])
def test_compiled_kernels_match_the_cpu_path(attn_form: str) -> None:
    assert "TRITON_INTERPRET" not in os.environ  # compiled for this GPU, not interpreted
    generator = torch.Generator().manual_seed(0)
    feat = torch.randn(8, 130, 24, 8, generator=generator)
    weights = torch.rand(8, 130, generator=generator)
    attn = weights if attn_form == "weights" else pmm_kernels.saliency(feat, weights)
    labels = torch.arange(4).repeat_interleave(2)
    partners = torch.tensor([2, 3, 4, 5, 6, 7, 0, 1])
    expected = pmm_kernels.a_hard_mix(feat, attn, labels, partners=partners, backend="torch")
    got = pmm_kernels.a_hard_mix(
        feat.cuda(), attn.cuda(), labels.cuda(), partners=partners.cuda(), backend="triton"
    )
    assert torch.equal(got.cpu(), expected)
