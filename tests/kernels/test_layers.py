"""The drop-in layers (docs/op.md#layer-geometry) and insert_feature_mix on torchvision models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from pmm_kernels import (
    MODES,
    AHardMix,
    FeatureMix,
    a_hard_mix,
    feature_mix,
    insert_feature_mix,
    mixed_targets,
    soft_cross_entropy,
)

LABELS = torch.tensor([0, 0, 1, 1])


@pytest.mark.parametrize(
    ("hw", "block", "lam"),
    [
        ((24, 8), (3, 2), 3 * 6 / 192),
        ((8, 4), (1, 1), 3 / 32),
        ((16, 8), (2, 2), 12 / 128),
        ((4, 2), (1, 1), 1 / 8),  # 8 blocks: round(3 * 8 / 32) = 1 of them
    ],
)
def test_grid_keeps_the_mixed_fraction(hw, block, lam):
    mix = FeatureMix("cutout")  # the paper's 8x4 grid, k = 3
    feat = torch.rand(2, 3, *hw)
    mix(feat)
    assert mix.block_size_for(*hw) == block
    assert torch.equal(mix.last_info.lam, torch.full((2,), lam, dtype=torch.float32))


# map -> (block, blocks mixed of the map's blocks); the target is 3/32 = 9.4 %.
GEOMETRY = {
    (24, 8): ((3, 2), 3, 32),
    (16, 8): ((2, 2), 3, 32),
    (13, 7): ((2, 2), 3, 28),  # edge blocks clipped: 7x4 blocks of 1 to 4 cells
    (7, 7): ((1, 2), 3, 28),
    (4, 2): ((1, 1), 1, 8),
    (2, 1): ((1, 1), 1, 2),  # the fewest possible: 50 %, far off, warned
}


@pytest.mark.parametrize("hw", list(GEOMETRY))
def test_geometry_on_any_map_keeps_the_share_of_blocks(hw, recwarn):
    block, k, blocks = GEOMETRY[hw]
    mix = FeatureMix("cutout", generator=torch.Generator().manual_seed(0))
    for _ in range(2):  # the second forward warns no more
        mix(torch.rand(256, 1, *hw))
    assert (mix.block_size_for(*hw), mix.num_blocks_for(*hw)) == (block, k)
    assert mix.last_info.blocks.shape == (256, k)
    # Random blocks: the mixed fraction measured from the mask averages k / blocks.
    measured = mix.last_info.mask.float().mean().item()
    assert measured == pytest.approx(k / blocks, abs=0.01)
    far_off = [w for w in recwarn if "far from the target 9.4%" in str(w.message)]
    assert len(far_off) == (1 if hw == (2, 1) else 0)
    if far_off:
        assert "mixes 1 of the 2 blocks of a 2x1 map (50.0%)" in str(far_off[0].message)


def test_salient_modes_follow_the_same_geometry():
    mix = FeatureMix("a_hard_mix")
    mix(torch.rand(4, 3, 13, 7), LABELS)
    assert mix.last_info.blocks.shape == (4, 3)
    cells = mix.last_info.mask.sum(dim=(1, 2))
    assert ((cells >= 3) & (cells <= 12)).all()  # 3 blocks of 1 to 4 cells


def test_block_size_pins_the_block():
    mix = FeatureMix("cutout", block_size=(2, 1), num_blocks=2)
    mix(torch.rand(2, 3, 8, 4))
    assert mix.block_size_for(8, 4) == (2, 1)
    assert torch.equal(mix.last_info.lam, torch.full((2,), 4 / 32))
    assert "block_size=(2, 1), num_blocks=2" in repr(mix)


def test_layer_equals_the_functional_and_keeps_its_info():
    feat, attn = torch.randn(4, 5, 8, 4), torch.rand(4, 8, 4)
    mix = FeatureMix("a_cutmix", generator=torch.Generator().manual_seed(3))
    out = mix(feat, LABELS, attn)
    expected, info = feature_mix(
        feat,
        LABELS,
        attn,
        mode="a_cutmix",
        block_size=(1, 1),
        generator=torch.Generator().manual_seed(3),
    )
    assert torch.equal(out, expected)
    assert all(torch.equal(a, b) for a, b in zip(mix.last_info, info, strict=True))
    mix.eval()
    assert mix(feat, LABELS, attn) is feat
    assert mix.last_info is not None  # the last training step's info stays


def test_generator_leaves_the_global_stream_alone():
    state = torch.get_rng_state()
    mix = FeatureMix("hard_mix", generator=torch.Generator().manual_seed(0))
    out = mix(torch.randn(4, 3, 8, 4, generator=torch.Generator().manual_seed(1)), LABELS)
    assert torch.equal(torch.get_rng_state(), state)
    assert out.shape == (4, 3, 8, 4)


def test_classifier_weights_are_grad_cam_for_a_pooled_linear_head():
    torch.manual_seed(0)
    feat = torch.rand(4, 6, 8, 4, requires_grad=True)
    head = nn.Linear(6, 3)
    # Grad-CAM by autograd: channel weight = spatial mean of d(logit of the label)/d(feat).
    score = head(feat.mean(dim=(2, 3))).gather(1, LABELS[:, None]).sum()
    (grad,) = torch.autograd.grad(score, feat)
    grad_cam = grad.mean(dim=(2, 3))
    torch.testing.assert_close(grad_cam * 32, head.weight[LABELS])
    mix = FeatureMix(classifier=head, generator=torch.Generator().manual_seed(0))
    out = mix(feat, LABELS)
    expected = a_hard_mix(
        feat, grad_cam, LABELS, block_size=(1, 1), generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(out, expected)


def test_activation_saliency_without_a_source():
    feat = torch.rand(4, 6, 8, 4)
    mix = FeatureMix(generator=torch.Generator().manual_seed(0))
    expected = a_hard_mix(
        feat,
        torch.ones(4, 6),
        LABELS,
        block_size=(1, 1),
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(mix(feat, LABELS), expected)


def test_targets_mix_labels_only_for_label_mixing_modes():
    feat = torch.rand(4, 3, 8, 4)
    for mode in MODES:
        mix = FeatureMix(mode)
        mix(feat, LABELS)
        info = mix.last_info if MODES[mode].mixes_labels else None
        assert torch.equal(mix.targets(LABELS, 2, 0.1), mixed_targets(LABELS, info, 2, 0.1))


@pytest.mark.parametrize("mode", list(MODES))
def test_targets_with_soft_cross_entropy_are_the_loss_of_every_mode(mode):
    torch.manual_seed(0)
    mix, logits = FeatureMix(mode), torch.randn(4, 2)
    mix(torch.rand(4, 3, 8, 4), LABELS)
    loss = soft_cross_entropy(logits, mix.targets(LABELS, 2), label_smoothing=0.1)
    if MODES[mode].mixes_labels:
        lam = mix.last_info.lam[:, None]
        area = (1 - lam) * F.one_hot(LABELS, 2) + lam * F.one_hot(LABELS[mix.last_info.partners], 2)
        torch.testing.assert_close(loss, F.cross_entropy(logits, area, label_smoothing=0.1))
    else:  # the labels stay: the engines' own integer-label loss
        torch.testing.assert_close(loss, F.cross_entropy(logits, LABELS, label_smoothing=0.1))


def test_a_hard_mix_layer_keeps_its_call():
    layer = AHardMix(block_size=(2, 2), num_blocks=2, generator=torch.Generator().manual_seed(0))
    feat, attn = torch.randn(4, 3, 6, 4), torch.rand(4, 3)
    expected = a_hard_mix(
        feat,
        attn,
        LABELS,
        block_size=(2, 2),
        num_blocks=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(layer(feat, attn, LABELS), expected)
    assert layer.eval()(feat, attn, LABELS) is feat


BAD_LAYERS = [
    ({"mode": "mixup"}, ValueError, r"mode must be one of \('a_hard_mix'"),
    ({"num_blocks": 0}, ValueError, "num_blocks must be a positive int"),
    ({"block_size": (0, 2)}, ValueError, "block_size must be two positive ints"),
    ({"block_size": 1}, ValueError, "block_size must be two positive ints"),
    ({"grid": (8,)}, ValueError, "grid must be two positive ints"),
    ({"grid": (2, 2), "block_size": (1, 1)}, ValueError, "give grid or block_size, not both"),
    ({"num_blocks": 33}, ValueError, r"num_blocks must be in \[1, 32\] for a 8x4 grid"),
    ({"mode": "cutmix", "classifier": nn.Linear(3, 2)}, ValueError, "does not use"),
    ({"classifier": nn.Conv2d(3, 2, 1)}, TypeError, "classifier must be an nn.Linear"),
    ({"backend": "cuda"}, ValueError, "backend must be one of"),
    ({"mode": "batch_drop", "h_ratio": 2}, ValueError, "h_ratio must be a number"),
    ({"generator": 0}, TypeError, "generator must be a torch.Generator"),
]


@pytest.mark.parametrize(("options", "error", "message"), BAD_LAYERS)
def test_layer_checks_its_arguments_when_built(options, error, message):
    with pytest.raises(error, match=message):
        FeatureMix(**options)


def test_a_hard_mix_layer_agrees_with_feature_mix_by_keyword():
    # The positional orders differ on purpose (docs); the keywords are the same.
    feat, attn = torch.randn(4, 3, 8, 4), torch.rand(4, 3)
    outputs = []
    for layer in (AHardMix(), FeatureMix("a_hard_mix")):
        torch.manual_seed(0)
        outputs.append(layer(feat, labels=LABELS, attn=attn))
    assert torch.equal(*outputs)


@pytest.mark.parametrize(
    ("labels", "values"), [([0, 1, 2, 3], "[0, 3]"), ([0, -1, 1, 1], "[-1, 1]")]
)
def test_classifier_labels_out_of_range_are_named(labels, values):
    mix = FeatureMix(classifier=nn.Linear(5, 3))
    with pytest.raises(
        ValueError, match=rf"labels must lie in \[0, 3\) .* got values in \{values}"
    ):
        mix(torch.rand(4, 5, 8, 4), torch.tensor(labels))


def test_layer_errors_at_forward_name_the_problem():
    with pytest.raises(ValueError, match="classifier takes 3 features but the map has 5"):
        FeatureMix(classifier=nn.Linear(3, 2))(torch.rand(4, 5, 8, 4), LABELS)
    with pytest.raises(ValueError, match="needs labels"):
        FeatureMix(classifier=nn.Linear(5, 2))(torch.rand(4, 5, 8, 4))
    with pytest.raises(ValueError, match=r"num_blocks must be in \[1, 2\]"):
        FeatureMix(block_size=(2, 2))(torch.rand(4, 5, 4, 2), LABELS)


def _resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=4)


def test_insert_after_a_submodule_of_a_torchvision_model():
    net = _resnet()
    images = torch.randn(4, 3, 64, 32)
    with torch.no_grad():
        reference = net.eval()(images)
    hook = insert_feature_mix(net, "layer3", FeatureMix(generator=torch.Generator()))
    with torch.no_grad():
        assert torch.equal(net(images), reference)  # eval: identity
    net.train()
    with hook.labels_for(LABELS):
        logits = net(images)
    assert hook.labels is None  # restored after the block
    info = hook.mix.last_info
    assert info.mask.shape == (4, 4, 2) and info.mask.any()
    logits.sum().backward()
    assert net.conv1.weight.grad.abs().sum() > 0
    hook.remove()
    hook.mix.last_info = None
    net(images)
    assert hook.mix.last_info is None


def test_hook_matches_the_layer_called_by_hand():
    net = _resnet().train()
    seen = {}
    net.layer2.register_forward_hook(lambda m, a, out: seen.__setitem__("x", out.detach()))
    hook = insert_feature_mix(net, "layer2", FeatureMix("hard_mix"))
    net.layer3.register_forward_pre_hook(lambda m, a: seen.__setitem__("mixed", a[0].detach()))
    hook.labels = LABELS
    images = torch.randn(4, 3, 64, 32)
    torch.manual_seed(5)
    net(images)
    torch.manual_seed(5)
    expected, info = feature_mix(seen["x"], LABELS, mode="hard_mix", block_size=(1, 1))
    assert torch.equal(seen["mixed"], expected)
    assert torch.equal(hook.mix.last_info.mask, info.mask) and info.mask.any()


def test_insert_errors():
    net = _resnet()
    with pytest.raises(ValueError, match=r"after='layer9' is not a submodule of ResNet"):
        insert_feature_mix(net, "layer9", FeatureMix())
    with pytest.raises(TypeError, match="mix must be a FeatureMix"):
        insert_feature_mix(net, "layer3", nn.Identity())
    insert_feature_mix(net, "layer3", FeatureMix())
    with pytest.raises(ValueError, match=r"a_hard_mix layer after 'layer3' needs labels"):
        net(torch.randn(2, 3, 64, 32))
