"""Gradients of the gradient (docs/op.md#gradient): the backward is linear in grad_out and its
own gradient is the forward copy with the same plan, on both backends."""

from __future__ import annotations

import pytest
import torch

from pmm_kernels import MODES, feature_mix
from pmm_kernels.ops import feature_mix as ops

SHAPE = (5, 3, 6, 4)
LABELS = torch.tensor([0, 0, 1, 2, 2])
GIVEN = torch.tensor([2, 0, 0, -1, 1])  # sample 0 is taken from twice, sample 3 not mixed
# The interpreted kernels are slow and gradgradcheck calls them once per element: a small map.
SMALL = (3, 1, 4, 2)


def mix_of(mode, backend="torch", device="cpu", dtype=torch.float64, attn_form="map", shape=SHAPE):
    """feature_mix as a function of feat alone. With a saliency map (not channel weights, which
    rank blocks by feat itself) the plan is fixed, so the function is linear in feat."""
    attn = None
    if MODES[mode].cells == "salient":
        n, c, h, w = shape
        attn = torch.rand(
            (n, c) if attn_form == "weights" else (n, h, w),
            generator=torch.Generator().manual_seed(3),
        )
        attn = attn.to(device, dtype)
    n = shape[0]
    partners = GIVEN[:n].clamp_max(n - 1).to(device) if MODES[mode].partner_rule != "none" else None

    def mix(feat):
        out, _ = feature_mix(
            feat,
            LABELS[:n].to(device),
            attn,
            mode=mode,
            block_size=(2, 2),
            num_blocks=2 if shape == SHAPE else 1,
            partners=partners,
            generator=torch.Generator().manual_seed(0),
            backend=backend,
        )
        return out

    return mix


def make_feat(device="cpu", dtype=torch.float64, seed=1, shape=SHAPE):
    feat = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return feat.to(device).requires_grad_()


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_gradgradcheck_in_float64(mode):
    # Before: "no autograd formula was registered" for pmm::feature_mix_backward.
    assert torch.autograd.gradgradcheck(mix_of(mode), (make_feat(),))


def test_gradgradcheck_with_channel_weights():
    mix = mix_of("a_hard_mix", attn_form="weights")
    assert torch.autograd.gradgradcheck(mix, (make_feat(),))


@pytest.mark.parametrize("mode", list(MODES))
def test_the_gradient_of_the_gradient_is_the_forward_copy(mode):
    mix, feat = mix_of(mode), make_feat()
    v = torch.randn(SHAPE, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(mix(feat), feat, v, create_graph=True)
    assert grad.requires_grad
    w = torch.randn(SHAPE, dtype=torch.float64)
    (grad_v,) = torch.autograd.grad(grad, v, w)
    # <B v, w> = <v, A w>, with A the mix and B its backward.
    assert torch.equal(grad_v, mix(w))


@pytest.mark.parametrize("mode", ["a_hard_mix", "cutmix", "batch_drop"])
def test_jacrev_is_the_mix_as_a_matrix(mode):
    mix, feat = mix_of(mode), make_feat().detach()
    jacobian = torch.func.jacrev(mix)(feat)  # (N, C, H, W, N, C, H, W)
    flat = jacobian.reshape(feat.numel(), feat.numel())
    x = torch.randn(SHAPE, dtype=torch.float64)
    assert torch.equal((flat @ x.flatten()).view(SHAPE), mix(x))  # linear: f(x) = J x
    assert set(flat.unique().tolist()) <= {0.0, 1.0}  # values are copied, never scaled


def test_opcheck_of_the_backward_op_with_its_autograd_formula():
    feat = make_feat(dtype=torch.float32)
    _, info = feature_mix(feat, LABELS, mode="cutmix", block_size=(2, 2), partners=GIVEN)
    args = (torch.randn(SHAPE), info.partners, info.blocks, info.mask, 2, 2, True, False)
    # The default utilities include test_autograd_registration and test_aot_dispatch_dynamic.
    torch.library.opcheck(ops.feature_mix_backward, args)


@pytest.mark.slow
@pytest.mark.filterwarnings(r"ignore:Input #\d+ requires gradient and is not a double")
@pytest.mark.parametrize("mode", ["a_cutmix", "batch_drop"])  # one backward kernel serves all
def test_triton_backend_gradgradcheck(mode, triton_device):
    # The kernels take float32 at most: a larger finite-difference step and tolerance.
    mix = mix_of(mode, "triton", triton_device, torch.float32, shape=SMALL)
    feat = make_feat(triton_device, torch.float32, shape=SMALL)
    assert torch.autograd.gradgradcheck(mix, (feat,), eps=1e-2, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("mode", list(MODES))
def test_triton_backend_gradient_of_the_gradient_equals_the_pytorch_path(mode, triton_device):
    feat = make_feat(dtype=torch.float32, shape=SMALL)
    v = torch.randn(SMALL, generator=torch.Generator().manual_seed(4))
    w = torch.randn(SMALL, generator=torch.Generator().manual_seed(5))
    results = []
    for backend, device in (("torch", torch.device("cpu")), ("triton", triton_device)):
        x = feat.detach().to(device).requires_grad_()
        vv = v.to(device).requires_grad_()
        out = mix_of(mode, backend, device, torch.float32, shape=SMALL)(x)
        (grad,) = torch.autograd.grad(out, x, vv, create_graph=True)
        results.append(torch.autograd.grad(grad, vv, w.to(device))[0].cpu())
    assert torch.equal(*results)
