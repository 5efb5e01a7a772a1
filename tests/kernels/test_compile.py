"""torch.compile with the default (inductor) backend, as users run it: training, fullgraph=True.

Kept lean: inductor compiles slowly on a small CPU, so each test compiles one small graph.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pmm_kernels
from pmm_kernels import FeatureMix, insert_feature_mix
from pmm_kernels.tokens import TokenGrid


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def assert_is_a_mix(out, feat, info):
    """Every cell of out comes from the sample itself, its partner, or zeros
    (docs/op.md#feature-mix-family)."""
    for i in range(feat.shape[0]):
        m, j = info.mask[i], int(info.partners[i])
        assert torch.equal(out[i][:, ~m], feat[i][:, ~m])
        expected = feat[j][:, m] if j >= 0 else torch.zeros_like(feat[i][:, m])
        assert torch.equal(out[i][:, m], expected)


@pytest.mark.slow
def test_a_hard_mix_trains_under_inductor_fullgraph():
    # The repro: the fake blocks were contiguous, the real ones a slice of a sort.
    feat = torch.randn(8, 16, 24, 8, requires_grad=True)
    attn, labels = torch.rand(8, 16), torch.arange(4).repeat_interleave(2)
    grad_out = torch.randn(8, 16, 24, 8)
    compiled = torch.compile(pmm_kernels.a_hard_mix, fullgraph=True)
    out, info = compiled(feat, attn, labels, return_info=True)
    (grad,) = torch.autograd.grad(out, feat, grad_out)
    assert_is_a_mix(out.detach(), feat.detach(), info)
    assert info.blocks.is_contiguous()
    eager = pmm_kernels.a_hard_mix(feat, attn, labels, partners=info.partners)
    assert torch.equal(out, eager)
    assert torch.equal(grad, torch.autograd.grad(eager, feat, grad_out)[0])


@pytest.mark.slow
def test_layer_under_inductor_with_several_batch_sizes():
    mix = FeatureMix("cutmix", grid=(4, 2), num_blocks=2)

    def step(x):
        return mix(x, None) * 2

    compiled = torch.compile(step, fullgraph=True)
    for n in (8, 6, 4, 1):  # the second size makes N symbolic: torch.rand must trace with it
        feat = torch.randn(n, 5, 8, 4, requires_grad=True)
        out = compiled(feat)
        out.sum().backward()
        assert_is_a_mix(out.detach() / 2, feat.detach(), mix.last_info)
        assert torch.equal(feat.grad.sum(), torch.full((), 2.0 * feat.numel()))


class TinyNet(nn.Module):
    def __init__(self, mix_mode: str) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 4)
        self.mix = FeatureMix(mix_mode, grid=(4, 2), classifier=self.fc)

    def forward(self, images, labels, partners):
        x = self.mix(self.stem(images), labels, partners=partners)
        return self.fc(x.mean(dim=(2, 3)))


@pytest.mark.slow
def test_model_compiled_by_inductor_matches_eager_for_given_partners():
    torch.manual_seed(0)
    net = TinyNet("a_hard_mix")
    images, labels = torch.randn(6, 3, 8, 4), torch.tensor([0, 0, 1, 1, 2, 3])
    partners = torch.tensor([2, 3, 0, 5, 0, -1])
    results = []
    for model in (net, torch.compile(net, fullgraph=True)):
        net.zero_grad()
        logits = model(images, labels, partners)
        logits.square().sum().backward()
        results.append(
            (logits.detach(), [p.grad.clone() for p in net.parameters()], net.mix.last_info)
        )
    (eager, eager_grads, eager_info), (compiled, compiled_grads, compiled_info) = results
    assert all(torch.equal(a, b) for a, b in zip(eager_info, compiled_info, strict=True))
    assert compiled_info.mask.any()
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    for a, b in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


class Stack(nn.Module):
    """An nn.Sequential inside a module: insert_feature_mix registers the layer on the module."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.mark.slow
@torch._inductor.config.patch(fallback_random=True)
def test_hooked_model_compiles_and_follows_eager_draws():
    # fallback_random: compiled code draws from the eager generator, so partners match too.
    torch.manual_seed(0)
    net = Stack(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1))
    hook = insert_feature_mix(net, "body.1", FeatureMix("hard_mix", grid=(4, 2)))
    images, labels = torch.randn(6, 3, 8, 4), torch.tensor([0, 0, 1, 1, 2, 3])
    outputs = []
    for model in (net, torch.compile(net, fullgraph=True)):
        torch.manual_seed(1)
        with hook.labels_for(labels):
            outputs.append(model(images))
        outputs.append(hook.mix.last_info)
    eager, eager_info, compiled, compiled_info = outputs
    assert all(torch.equal(a, b) for a, b in zip(eager_info, compiled_info, strict=True))
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


def test_a_generator_under_fullgraph_says_what_to_do():
    mix = FeatureMix("cutmix", grid=(4, 2), generator=torch.Generator().manual_seed(0))
    compiled = torch.compile(lambda x: mix(x), backend="aot_eager", fullgraph=True)
    with pytest.raises(Exception, match="pass generator=None"):
        compiled(torch.randn(4, 3, 8, 4))


@pytest.mark.parametrize("mode", list(pmm_kernels.MODES))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "tokens"])
def test_fake_implementations_match_the_real_outputs(mode, layout, monkeypatch):
    # opcheck compares shapes, strides and dtypes of the fake and the real outputs, as inductor
    # does; the op's arguments are captured from a real call of every mode.
    calls = []
    real = pmm_kernels.ops.feature_mix.feature_mix_forward

    def capture(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(pmm_kernels.ops.feature_mix, "feature_mix_forward", capture)
    feat = torch.randn(5, 3, 7, 5)
    token_grid = None
    if layout == "channels_last":
        feat = feat.contiguous(memory_format=torch.channels_last)
    if layout == "tokens":  # (N, 2 + 7*5, C): the op writes the output tokens itself
        token_grid = TokenGrid(7, 5, prefix=2)
        feat = torch.randn(5, 2 + 7 * 5, 3)
    attn = torch.rand(5, 3) if pmm_kernels.MODES[mode].cells == "salient" else None
    out, info = pmm_kernels.feature_mix(
        feat.requires_grad_(),
        torch.tensor([0, 1, 0, 2, 2]),
        attn,
        mode=mode,
        block_size=(2, 2),
        num_blocks=4,
        token_grid=token_grid,
    )
    (args,) = calls
    torch.library.opcheck(real, args, test_utils=("test_schema", "test_faketensor"))
    backward_args = (
        torch.randn_like(out),
        *info[:3],
        2,
        2,
        mode not in ("cutout", "batch_drop"),
        False,
    )
    torch.library.opcheck(
        pmm_kernels.ops.feature_mix.feature_mix_backward,
        backward_args,
        test_utils=("test_schema", "test_faketensor"),
    )
