"""The Triton kernels against the PyTorch path: out, MixInfo and grad must agree bit for bit.

Without a GPU the kernels run under ``TRITON_INTERPRET=1`` (set in conftest.py), so shapes stay
small; on a machine with a GPU they are compiled and run on CUDA (``triton_device``), against
the PyTorch path on CPU, whose backward adds in a fixed order (on CUDA it adds atomically).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import (
    LAYOUTS,
    SEEDS,
    check_against_oracle,
    copy_keeping_layout,
    make_feat,
    mix_problems,
)

from pmm_kernels import MODES, a_hard_mix, feature_mix
from pmm_kernels.ops import reference
from pmm_kernels.ops.feature_mix_triton import (
    feature_mix_backward_triton,
    feature_mix_forward_triton,
)
from pmm_kernels.ops.plan import CellSource, MixPlan
from pmm_kernels.testing import cases


def on(device, value):
    return value.to(device) if isinstance(value, torch.Tensor) else value


def run_both(feat, attn, labels, *, seed=0, **kwargs):
    """Forward and backward on both backends with the same generator seed and grad_out.

    The kernels run on ``feat``'s device, the PyTorch path on CPU; results come back on CPU.
    """
    results = {}
    grad_out = torch.randn(feat.shape, generator=torch.Generator().manual_seed(seed + 1))
    grad_out = grad_out.to(device=feat.device, dtype=feat.dtype)
    for backend, device in (("torch", torch.device("cpu")), ("triton", feat.device)):
        # Both backends see feat's own strides and offset (a token view stays one).
        x = copy_keeping_layout(feat.detach(), device).requires_grad_()
        out, info = a_hard_mix(
            x,
            on(device, attn),
            on(device, labels),
            generator=torch.Generator().manual_seed(seed),
            return_info=True,
            backend=backend,
            **{k: on(device, v) for k, v in kwargs.items()},
        )
        (grad,) = torch.autograd.grad(out, x, grad_out.to(device))
        results[backend] = (out.detach().cpu(), type(info)(*(t.cpu() for t in info)), grad.cpu())
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


@pytest.mark.slow
@pytest.mark.parametrize("shape", cases.SWEEP, ids=lambda shape: shape.name)
@pytest.mark.parametrize("attn_form", cases.ATTN_FORMS)
@pytest.mark.parametrize("partners", ["sampled", "given"])
def test_triton_equals_torch(shape, attn_form, partners, triton_device):
    n, c, h, w, block_size = shape.n, shape.c, shape.h, shape.w, shape.block_size
    num_grid_blocks = shape.num_grid_blocks
    labels = torch.randint(0, 3, (n,), device=triton_device)
    given = torch.randint(-1, n, (n,), device=triton_device) if partners == "given" else None
    for k in sorted({1, (num_grid_blocks + 1) // 2, num_grid_blocks}):
        feat = make_feat((n, c, h, w), device=triton_device)
        attn = torch.randn(n, c) if attn_form == "weights" else torch.randn(n, h, w)
        results = run_both(
            feat,
            attn.to(triton_device),
            labels,
            block_size=block_size,
            num_blocks=k,
            partners=given,
        )
        assert_backends_agree(results)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", cases.DTYPES, ids=str)
@pytest.mark.parametrize("attn_form", cases.ATTN_FORMS)
def test_triton_dtypes_and_layouts(dtype, layout, attn_form, triton_device):
    n, c, h, w = 6, 35, 7, 5
    feat = make_feat((n, c, h, w), dtype=dtype, layout=layout, device=triton_device, scale=50)
    attn = torch.rand(n, c) if attn_form == "weights" else torch.rand(n, h, w, dtype=dtype)
    # Sample 0 is taken by four others: the backward adds four gradients in a fixed order.
    partners = torch.tensor([2, 0, 0, 0, 0, -1], device=triton_device)
    results = run_both(
        feat,
        attn.to(triton_device),
        torch.arange(n, device=triton_device),
        block_size=(2, 2),
        num_blocks=3,
        partners=partners,
    )
    assert_backends_agree(results)


@pytest.mark.slow
@settings(max_examples=15, deadline=None)
@given(
    problem=mix_problems(max_n=8, max_c=40, max_side=9),
    seed=SEEDS,
    attn_form=st.sampled_from(["weights", "map"]),
)
def test_triton_equals_torch_on_random_shapes(problem, seed, attn_form):
    (n, c, h, w), (bh, bw), k = problem
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # no fixtures here
    generator = torch.Generator().manual_seed(seed)
    feat = torch.randn(n, c, h, w, generator=generator)
    attn = (
        torch.randn(n, c, generator=generator)
        if attn_form == "weights"
        else torch.randn(n, h, w, generator=generator)
    )
    labels = torch.randint(0, 3, (n,), generator=generator)
    assert_backends_agree(
        run_both(feat.to(device), attn, labels, seed=seed, block_size=(bh, bw), num_blocks=k)
    )


def test_triton_matches_the_oracle(triton_device):
    feat = make_feat((5, 7, 7, 5), device=triton_device)
    check_against_oracle(
        feat,
        torch.rand(5, 7, device=triton_device),
        torch.tensor([0, 1, 0, 1, 2], device=triton_device),
        block_size=(3, 2),
        num_blocks=4,
        backend="triton",
    )


def test_triton_kernels_really_run(monkeypatch, triton_device):
    def no_fallback(*args, **kwargs):
        raise AssertionError("the PyTorch path ran instead of the Triton kernels")

    monkeypatch.setattr(reference, "feature_mix_forward_torch", no_fallback)
    monkeypatch.setattr(reference, "a_hard_mix_backward_torch", no_fallback)
    feat = torch.randn(4, 3, 6, 4, device=triton_device, requires_grad=True)
    out = a_hard_mix(
        feat,
        torch.rand(4, 3, device=triton_device),
        torch.tensor([0, 0, 1, 1], device=triton_device),
        backend="triton",
    )
    out.sum().backward()
    with pytest.raises(AssertionError, match="PyTorch path ran"):
        a_hard_mix(
            feat,
            torch.rand(4, 3, device=triton_device),
            torch.tensor([0, 0, 1, 1], device=triton_device),
            backend="torch",
        )


def test_environment_variable_selects_the_backend(monkeypatch, triton_device):
    calls = []
    original = reference.feature_mix_forward_torch

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(reference, "feature_mix_forward_torch", spy)
    args = (
        torch.randn(2, 3, 6, 4, device=triton_device),
        torch.rand(2, 3, device=triton_device),
        torch.tensor([0, 1], device=triton_device),
    )
    monkeypatch.setenv("PMM_KERNELS_BACKEND", "triton")
    a_hard_mix(*args)
    assert calls == []
    monkeypatch.setenv("PMM_KERNELS_BACKEND", "torch")
    a_hard_mix(*args)
    assert calls == [1]


def test_triton_rejects_maps_beyond_its_limits(triton_device):
    feat = torch.randn(1, 1, 200, 100, device=triton_device)
    with pytest.raises(ValueError, match=r"backend='triton' supports H\*W <= 16384"):
        a_hard_mix(
            feat,
            torch.rand(1, 1, device=triton_device),
            torch.tensor([0], device=triton_device),
            backend="triton",
        )


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_works_under_torch_compile_without_graph_breaks(backend, triton_device):
    torch._dynamo.reset()

    def step(feat, attn, labels):
        return (a_hard_mix(feat, attn, labels, backend=backend) * 2).sum()

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    feat = torch.randn(4, 3, 6, 4, device=triton_device, requires_grad=True)
    attn = torch.rand(4, 3, device=triton_device)
    labels = torch.tensor([0, 0, 1, 1], device=triton_device)
    torch.manual_seed(0)
    compiled(feat, attn, labels).backward()
    grad_compiled = feat.grad.clone()
    feat.grad = None
    torch.manual_seed(0)
    step(feat, attn, labels).backward()
    assert torch.equal(grad_compiled, feat.grad)


# ---------------------------------------------------------------------------------------------
# The feature-mix family (docs/op.md#feature-mix-family): the Triton launcher against the PyTorch
# launcher, which shares its signature and is itself checked against the loop oracle in
# test_feature_mix.py.


def check_family(
    feat, source, partner_rule, given, block_size, num_blocks, seed=0, into_view=False
):
    """Forward and backward launchers of both backends agree bit for bit; with ``into_view``
    both write into given outputs with feat's strides and offset (the op's token path)."""
    device = feat.device
    generator = torch.Generator().manual_seed(seed)
    plan = cases.launcher_plan(source, partner_rule, given, feat, block_size, num_blocks, generator)

    def output(like, on):
        # NaN-filled, so that a cell the launcher forgot to write cannot pass.
        if not into_view:
            return None
        return copy_keeping_layout(like, on, torch.full_like(like, float("nan")))

    out = output(feat, device)
    got = feature_mix_forward_triton(feat, plan, out)
    expected = reference.feature_mix_forward_torch(
        copy_keeping_layout(feat, "cpu"), plan.to("cpu"), output(feat, "cpu")
    )
    # Both backends allocate alike (feat's strides where feat is dense) or write where told.
    assert got[0].dtype == feat.dtype and got[0].stride() == expected[0].stride()
    if into_view or feat.is_contiguous():
        assert got[0].stride() == feat.stride()
    assert out is None or got[0] is out
    for name, a, b in zip(("out", "partners", "blocks", "mask", "lam"), got, expected, strict=True):
        assert a.dtype == b.dtype, name
        assert torch.equal(a.cpu(), b), name
    _, partners, blocks, mask, _ = expected
    values = torch.randn(feat.shape, generator=generator).to(dtype=feat.dtype)
    # grad_out in feat's layout, so the backward sees the strides the forward produced.
    grad_out = copy_keeping_layout(feat, "cpu", values)
    grad = feature_mix_backward_triton(
        copy_keeping_layout(grad_out, device),
        partners.to(device),
        mask.to(device),
        output(grad_out, device),
    )
    want = reference.feature_mix_backward_torch(
        grad_out,
        partners,
        blocks,
        mask,
        block_size,
        partner_rule != "none",
        output(grad_out, "cpu"),
    )
    assert grad.stride() == want.stride()
    if into_view or grad_out.is_contiguous():
        assert grad.stride() == grad_out.stride()
    assert torch.equal(grad.cpu(), want)


@pytest.mark.parametrize("call", cases.CALLS, ids=lambda call: call.name)
@pytest.mark.parametrize("shape", cases.LAUNCHED, ids=lambda shape: shape.name)
def test_feature_mix_launchers_agree(call, shape, triton_device):
    shape = call.cut(shape)  # Batch DropBlock: one rectangle of a third of the height
    feat = make_feat((shape.n, shape.c, shape.h, shape.w), device=triton_device, seed=shape.n)
    check_family(
        feat, call.source, call.partner_rule, call.given, shape.block_size, shape.num_blocks
    )


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", cases.DTYPES, ids=str)
@pytest.mark.parametrize(
    ("source", "partner_rule"), [("keys", "any_other"), ("corner", "none"), ("weights", "none")]
)
def test_feature_mix_dtypes_and_layouts(source, partner_rule, dtype, layout, triton_device):
    feat = make_feat(
        (6, 5, 7, 5), dtype=dtype, layout=layout, device=triton_device, seed=1, scale=50
    )
    block_size, k = ((2, 5), 1) if source == "corner" else ((2, 2), 3)
    # Token maps are written into the output tokens' patch view, as the op does.
    check_family(feat, source, partner_rule, False, block_size, k, into_view=layout == "tokens")


def test_feature_mix_keys_ties_go_to_the_lower_block(triton_device):
    feat = make_feat((2, 3, 4, 4), device=triton_device, seed=0)
    keys = torch.tensor([[0.5, 0.9, 0.5, 0.9], [0.1, 0.1, 0.1, 0.1]], device=triton_device)
    labels = torch.tensor([0, 1], device=triton_device)
    plan = MixPlan(CellSource("keys", keys), labels, None, None, (2, 2), 3, "none")
    _, _, blocks, _, _ = feature_mix_forward_triton(feat, plan)
    assert blocks.tolist() == [[1, 3, 0], [0, 1, 2]]


def test_mix_plan_rejects_bad_calls(triton_device):
    labels = torch.tensor([0, 1], device=triton_device)
    keys = CellSource("keys", torch.rand(2, 4, device=triton_device))
    with pytest.raises(ValueError, match="cells kind must be one of"):
        CellSource("attn", keys.values)
    with pytest.raises(ValueError, match="partner_rule must be one of"):
        MixPlan(keys, labels, None, None, (2, 2), 1, "all")
    with pytest.raises(ValueError, match="needs u"):
        MixPlan(keys, labels, None, None, (2, 2), 1, "any_other")
    corner = CellSource("corner", torch.tensor([0, 0], device=triton_device))
    with pytest.raises(ValueError, match="only zeroes cells"):
        MixPlan(corner, labels, labels.float(), None, (2, 2), 1, "any_other")


@pytest.mark.slow
def test_partner_search_crosses_label_chunks(triton_device):
    # 700 samples: the planning kernel reads the labels in three chunks of 256.
    n = 700
    generator = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 5, (n,), generator=generator)
    u = torch.rand(n, generator=generator)
    feat = torch.randn(n, 1, 1, 2, generator=generator).to(triton_device)
    keys = CellSource("keys", torch.rand(n, 2, generator=generator))
    plan = MixPlan(keys, labels, u, None, (1, 1), 1, "different_label")
    _, partners, *_ = feature_mix_forward_triton(feat, plan.to(triton_device))
    expected, label_list = [], labels.tolist()
    for i in range(n):
        candidates = [j for j in range(n) if label_list[j] != label_list[i]]
        expected.append(
            candidates[min(math.floor(float(u[i]) * len(candidates)), len(candidates) - 1)]
        )
    assert partners.tolist() == expected


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_mode_agrees_across_backends_with_its_draws(mode, triton_device):
    """The public op: the same CPU generator gives the same draws, hence the same result."""
    n, c, h, w = 6, 5, 7, 5
    feat = make_feat((n, c, h, w), device=triton_device, seed=4)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    attn = torch.rand(n, c, generator=torch.Generator().manual_seed(5))
    grad_out = torch.randn(feat.shape, generator=torch.Generator().manual_seed(6))
    results = {}
    for backend, device in (("torch", torch.device("cpu")), ("triton", triton_device)):
        x = feat.detach().to(device, copy=True).requires_grad_()
        out, info = feature_mix(
            x,
            labels.to(device),
            attn.to(device) if MODES[mode].cells == "salient" else None,
            mode=mode,
            block_size=(2, 2),
            num_blocks=3,
            generator=torch.Generator().manual_seed(7),
            backend=backend,
        )
        (grad,) = torch.autograd.grad(out, x, grad_out.to(device))
        results[backend] = (out.detach().cpu(), type(info)(*(t.cpu() for t in info)), grad.cpu())
    assert_backends_agree(results)
    assert results["torch"][1].mask.any()  # the mode did something to compare
