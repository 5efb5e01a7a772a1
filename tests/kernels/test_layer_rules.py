"""The layer's rules where users train it wrong silently otherwise (issue 23): activation
checkpointing, unread mixed targets, several calls per forward, tuple outputs, stage ends at any
depth, a classifier that is not on the pooled map, copies made inside mix_labels, TorchScript."""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.checkpoint import checkpoint

import pmm_kernels
from pmm_kernels import FeatureMix, insert_feature_mix, mix_labels

LABELS = torch.tensor([0, 0, 1, 1, 2, 2])


class Net(nn.Module):
    """A stem, a stage (checkpointed or not) and a pooled head: the shape of every ReID net."""

    def __init__(self, checkpointed: bool = False, reentrant: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.stage = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 3)
        self.checkpointed, self.reentrant = checkpointed, reentrant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.checkpointed:
            x = checkpoint(self.stage, x, use_reentrant=self.reentrant)
        else:
            x = self.stage(x)
        return self.fc(x.mean((2, 3)))


def _stem_gradient(mode: str, checkpointed: bool, reentrant: bool, generator_seed: int | None):
    torch.manual_seed(0)
    net = Net(checkpointed, reentrant)
    generator = None if generator_seed is None else torch.Generator().manual_seed(generator_seed)
    mix = FeatureMix(mode, grid=(4, 2), num_blocks=2, generator=generator)
    insert_feature_mix(net, "stage", mix)
    images = torch.randn(6, 3, 8, 4, generator=torch.Generator().manual_seed(1))
    if reentrant:
        images.requires_grad_(True)  # the reentrant variant needs an input that requires grad
    torch.manual_seed(5)  # the global stream the layer draws from without a generator
    with mix_labels(net, LABELS):
        loss = net(images).square().sum()
    loss.backward()  # outside mix_labels: a recompute must need no labels
    assert net.stem.weight.grad is not None
    return loss.detach(), net.stem.weight.grad, mix.last_info


@pytest.mark.parametrize("mode", list(pmm_kernels.MODES))
@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("generator_seed", [None, 3])
def test_checkpointing_replays_the_forwards_mix(mode, reentrant, generator_seed):
    loss, grad, info = _stem_gradient(mode, False, False, generator_seed)
    loss_ckpt, grad_ckpt, info_ckpt = _stem_gradient(mode, True, reentrant, generator_seed)
    assert torch.equal(loss, loss_ckpt)
    assert torch.equal(info.mask, info_ckpt.mask)
    assert torch.allclose(grad, grad_ckpt, rtol=1e-5, atol=1e-6)


def test_unread_mixed_targets_warn_once():
    net = Net()
    mix = FeatureMix("cutmix", grid=(4, 2))
    insert_feature_mix(net, "stage", mix)
    images = torch.randn(6, 3, 8, 4)
    with mix_labels(net, LABELS):
        net(images)
    with pytest.warns(UserWarning, match=r"nobody asked for layer.targets") as caught:
        with mix_labels(net, LABELS):
            net(images)
        with mix_labels(net, LABELS):
            net(images)
    assert len(caught) == 1  # once per layer
    # Reading the targets between forwards, or a mode that keeps its labels: no warning.
    for mode, read in (("cutmix", True), ("a_hard_mix", False)):
        other = Net()
        layer = FeatureMix(mode, grid=(4, 2))
        insert_feature_mix(other, "stage", layer)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for _ in range(3):
                with mix_labels(other, LABELS):
                    other(images)
                if read:
                    layer.targets(LABELS, num_classes=3)


class TwoViews(nn.Module):
    """One trunk run twice per forward (two views), as two-branch ReID nets do."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x).mean((2, 3)) + self.trunk(x.flip(-1)).mean((2, 3))


def test_a_module_called_twice_keeps_each_calls_mix():
    net = TwoViews()
    mix = FeatureMix("cutmix", grid=(4, 2))
    insert_feature_mix(net, "trunk", mix)
    with mix_labels(net, LABELS):
        net(torch.randn(6, 3, 8, 4))
    assert len(mix.infos) == 2 and mix.last_info is mix.infos[1]
    with pytest.raises(ValueError, match=r"ran 2 times in its last training forward: pass call="):
        mix.targets(LABELS, num_classes=3)
    first = mix.targets(LABELS, num_classes=3, call=0)
    expected = pmm_kernels.mixed_targets(LABELS, mix.infos[0], num_classes=3)
    assert torch.equal(first, expected)
    with pytest.raises(ValueError, match=r"call must be in \[0, 2\)"):
        mix.targets(LABELS, num_classes=3, call=2)
    with mix_labels(net, LABELS):  # the next forward starts afresh
        net(torch.randn(6, 3, 8, 4))
    assert len(mix.infos) == 2


def test_a_module_called_twice_under_checkpointing_is_refused():
    net = TwoViews()
    insert_feature_mix(net, "trunk", FeatureMix("cutmix", grid=(4, 2)))
    images = torch.randn(6, 3, 8, 4, requires_grad=True)
    with mix_labels(net, LABELS):
        out = checkpoint(net, images, use_reentrant=False)
    with pytest.raises(ValueError, match=r"ran 2 times in its training forward"):
        out.sum().backward()


class TupleBlock(nn.Module):
    """Returns (map, side output), as torchreid's MLFN blocks do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x)
        return y, y.mean((2, 3))


class TupleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = TupleBlock()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.block(x)


def test_tuple_outputs_mix_the_chosen_element_and_messages_carry_no_values():
    net = TupleNet()
    insert_feature_mix(net, "block", FeatureMix("cutout", grid=(4, 2)), output=0)
    torch.manual_seed(0)
    with mix_labels(net, LABELS):
        mixed, side = net(torch.randn(6, 3, 8, 4))
    torch.manual_seed(0)
    plain = net.block.conv(torch.randn(6, 3, 8, 4))
    assert net.mix_after_block.last_info.mask.any()
    assert torch.equal(side, plain.mean((2, 3)))  # the side output passes through untouched
    assert torch.equal(
        mixed[~net.mix_after_block.last_info.mask[:, None].expand_as(mixed)],
        plain[~net.mix_after_block.last_info.mask[:, None].expand_as(plain)],
    )
    unchosen = TupleNet()
    insert_feature_mix(unchosen, "block", FeatureMix("cutout", grid=(4, 2)))
    with (
        pytest.raises(TypeError, match=r"returns a tuple of 2: .* pass output=") as error,
        mix_labels(unchosen, LABELS),
    ):
        unchosen(torch.randn(6, 3, 64, 32))
    assert len(str(error.value)) < 400 and "tensor([" not in str(error.value)


def test_a_negative_index_is_the_end_of_a_stage_at_any_depth():
    for depth, last in ((50, "5"), (101, "22")):
        net = getattr(torchvision.models, f"resnet{depth}")(num_classes=3)
        hook = insert_feature_mix(net, "layer3.-1", FeatureMix())
        assert hook.name == f"layer3.{last}"
    net = torchvision.models.resnet50(num_classes=3)
    with pytest.raises(ValueError, match=r"'layer3' has 6 blocks, so its negative indices"):
        insert_feature_mix(net, "layer3.-7", FeatureMix())
    with pytest.raises(ValueError, match=r"nn.Sequential or nn.ModuleList, and 'layer3.0' is"):
        insert_feature_mix(net, "layer3.0.-1", FeatureMix())


class ExtraFc(nn.Module):
    """conv -> pool -> Linear(8, 8) -> classifier: OSNet's shape; the classifier is not on the
    pooled map, so its rows are not the Grad-CAM weights of the map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 8)
        self.classifier = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.fc(self.conv(x).mean((2, 3))))


def test_a_classifier_not_on_the_pooled_map_is_refused_at_the_first_forward():
    net = ExtraFc()
    insert_feature_mix(net, "conv", FeatureMix(classifier=net.classifier, grid=(4, 2)))
    with (
        pytest.raises(ValueError, match=r"does not read the average-pooled map of 'conv'"),
        mix_labels(net, LABELS),
    ):
        net(torch.randn(6, 3, 8, 4))
    # The right head passes, and is checked once.
    good = torchvision.models.resnet18(num_classes=3)
    insert_feature_mix(good, "layer4", FeatureMix(classifier=good.fc))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with mix_labels(good, LABELS):
            good(torch.randn(6, 3, 256, 128))


def test_a_copy_made_inside_mix_labels_does_not_keep_the_batch_labels():
    net = Net()
    insert_feature_mix(net, "stage", FeatureMix("a_hard_mix", grid=(4, 2)))
    with mix_labels(net, LABELS):
        ema = copy.deepcopy(net)  # an EMA model made during a step
        pickled = pickle.loads(pickle.dumps(net))
    for model in (ema, pickled):
        assert model.mix_after_stage.labels is None
        with pytest.raises(ValueError, match="needs labels"):
            model(torch.randn(6, 3, 8, 4))


class Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.stage = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage(self.stem(x)).mean((2, 3))


def test_torchscript_refuses_in_one_line_and_tracing_a_training_forward_is_refused():
    net = Plain()
    hook = insert_feature_mix(net, "stage", FeatureMix(grid=(4, 2)))
    with pytest.raises(TypeError, match=r"a FeatureMix cannot be scripted .*hook.remove\(\)"):
        torch.jit.script(net.eval())
    with (
        pytest.raises(RuntimeError, match=r"trace the model in eval\(\) mode"),
        mix_labels(net.train(), LABELS),
    ):
        torch.jit.trace(net, torch.randn(6, 3, 8, 4))
    traced = torch.jit.trace(net.eval(), torch.randn(6, 3, 8, 4))  # the identity in eval
    images = torch.randn(6, 3, 8, 4)
    assert torch.equal(traced(images), net(images))
    hook.remove()
    torch.jit.script(net)  # scripts once the layer is out
