"""The Triton kernels against the PyTorch path: out, MixInfo and grad must agree bit for bit.

On CPU the kernels run under ``TRITON_INTERPRET=1`` (set in conftest.py), so shapes stay small;
on a machine with a GPU the same tests run on CUDA as well.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_a_hard_mix import check_against_oracle, make_feat

from pmm_kernels import a_hard_mix
from pmm_kernels.ops import reference


def run_both(feat, attn, labels, *, seed=0, **kwargs):
    """Forward and backward on both backends with the same generator seed and grad_out."""
    results = {}
    grad_out = torch.randn(feat.shape, generator=torch.Generator().manual_seed(seed + 1))
    grad_out = grad_out.to(device=feat.device, dtype=feat.dtype)
    for backend in ("torch", "triton"):
        x = feat.detach().clone().requires_grad_()
        out, info = a_hard_mix(x, attn, labels, generator=torch.Generator().manual_seed(seed),
                               return_info=True, backend=backend, **kwargs)
        (grad,) = torch.autograd.grad(out, x, grad_out)
        results[backend] = (out.detach(), info, grad)
    return results


def assert_backends_agree(results):
    out_t, info_t, grad_t = results["torch"]
    out_k, info_k, grad_k = results["triton"]
    assert out_k.dtype == out_t.dtype and out_k.stride() == out_t.stride()
    assert torch.equal(out_k, out_t)
    for name, a, b in zip(info_t._fields, info_t, info_k, strict=True):
        assert a.dtype == b.dtype, name
        assert torch.equal(a, b), name
    assert torch.equal(grad_k, grad_t)


# The grid, thinned to stay quick under the interpreter: every N, C, map size and block
# size appears, and each case runs k = 1, the middle and all blocks.
CASES = [
    (1, 3, (24, 8), (3, 2)),
    (2, 130, (24, 8), (1, 1)),
    (16, 1, (24, 8), "full"),
    (7, 3, (7, 5), (3, 2)),
    (16, 130, (7, 5), (1, 1)),
    (1, 1, (7, 5), "full"),
    (2, 3, (1, 1), (3, 2)),
    (7, 1, (1, 1), (1, 1)),
    (16, 3, (1, 1), "full"),
    (7, 130, (24, 8), (3, 2)),
]


@pytest.mark.parametrize(("n", "c", "hw", "block"), CASES)
@pytest.mark.parametrize("attn_form", ["weights", "map"])
@pytest.mark.parametrize("partners", ["sampled", "given"])
def test_triton_equals_torch(n, c, hw, block, attn_form, partners, device):
    h, w = hw
    block_size = (h, w) if block == "full" else block
    num_grid_blocks = math.ceil(h / block_size[0]) * math.ceil(w / block_size[1])
    labels = torch.randint(0, 3, (n,), device=device)
    negatives = torch.randint(-1, n, (n,), device=device) if partners == "given" else None
    for k in sorted({1, (num_grid_blocks + 1) // 2, num_grid_blocks}):
        feat = make_feat((n, c, h, w), device=device)
        attn = (torch.randn(n, c) if attn_form == "weights" else torch.randn(n, h, w)).to(device)
        results = run_both(feat, attn, labels, block_size=block_size, num_blocks=k,
                           negatives=negatives)
        assert_backends_agree(results)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("attn_form", ["weights", "map"])
def test_triton_dtypes_and_layouts(dtype, layout, attn_form, device):
    n, c, h, w = 6, 35, 7, 5
    feat = make_feat((n, c, h, w), dtype=dtype, layout=layout, device=device) * 50
    attn = torch.rand(n, c) if attn_form == "weights" else torch.rand(n, h, w, dtype=dtype)
    # Sample 0 is taken by four others: the backward adds four gradients in a fixed order.
    negatives = torch.tensor([2, 0, 0, 0, 0, -1], device=device)
    results = run_both(feat, attn.to(device), torch.arange(n, device=device),
                       block_size=(2, 2), num_blocks=3, negatives=negatives)
    assert_backends_agree(results)


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 8),
    c=st.integers(1, 40),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    bh=st.integers(1, 4),
    bw=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
    attn_form=st.sampled_from(["weights", "map"]),
    data=st.data(),
)
def test_triton_equals_torch_on_random_shapes(n, c, h, w, bh, bw, seed, attn_form, data):
    generator = torch.Generator().manual_seed(seed)
    k = data.draw(st.integers(1, math.ceil(h / bh) * math.ceil(w / bw)), label="num_blocks")
    feat = torch.randn(n, c, h, w, generator=generator)
    attn = torch.randn(n, c, generator=generator) if attn_form == "weights" else \
        torch.randn(n, h, w, generator=generator)
    labels = torch.randint(0, 3, (n,), generator=generator)
    assert_backends_agree(run_both(feat, attn, labels, seed=seed, block_size=(bh, bw),
                                   num_blocks=k))


def test_triton_matches_the_oracle(device):
    feat = make_feat((5, 7, 7, 5), device=device)
    check_against_oracle(feat, torch.rand(5, 7, device=device), torch.tensor(
        [0, 1, 0, 1, 2], device=device), block_size=(3, 2), num_blocks=4, backend="triton")


def test_triton_kernels_really_run(monkeypatch, device):
    def no_fallback(*args, **kwargs):
        raise AssertionError("the PyTorch path ran instead of the Triton kernels")

    monkeypatch.setattr(reference, "a_hard_mix_forward_torch", no_fallback)
    monkeypatch.setattr(reference, "a_hard_mix_backward_torch", no_fallback)
    feat = torch.randn(4, 3, 6, 4, device=device, requires_grad=True)
    out = a_hard_mix(feat, torch.rand(4, 3, device=device), torch.tensor([0, 0, 1, 1],
                     device=device), backend="triton")
    out.sum().backward()
    with pytest.raises(AssertionError, match="PyTorch path ran"):
        a_hard_mix(feat, torch.rand(4, 3, device=device),
                   torch.tensor([0, 0, 1, 1], device=device), backend="torch")


def test_environment_variable_selects_the_backend(monkeypatch):
    calls = []
    original = reference.a_hard_mix_forward_torch

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(reference, "a_hard_mix_forward_torch", spy)
    args = (torch.randn(2, 3, 6, 4), torch.rand(2, 3), torch.tensor([0, 1]))
    monkeypatch.setenv("PMM_KERNELS_BACKEND", "triton")
    a_hard_mix(*args)
    assert calls == []
    monkeypatch.setenv("PMM_KERNELS_BACKEND", "torch")
    a_hard_mix(*args)
    assert calls == [1]


def test_triton_rejects_maps_beyond_its_limits():
    feat = torch.randn(1, 1, 200, 100)
    with pytest.raises(ValueError, match=r"backend='triton' supports H\*W <= 16384"):
        a_hard_mix(feat, torch.rand(1, 1), torch.tensor([0]), backend="triton")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_works_under_torch_compile_without_graph_breaks(backend):
    torch._dynamo.reset()

    def step(feat, attn, labels):
        return (a_hard_mix(feat, attn, labels, backend=backend) * 2).sum()

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    feat = torch.randn(4, 3, 6, 4, requires_grad=True)
    attn, labels = torch.rand(4, 3), torch.tensor([0, 0, 1, 1])
    torch.manual_seed(0)
    compiled(feat, attn, labels).backward()
    grad_compiled = feat.grad.clone()
    feat.grad = None
    torch.manual_seed(0)
    step(feat, attn, labels).backward()
    assert torch.equal(grad_compiled, feat.grad)
