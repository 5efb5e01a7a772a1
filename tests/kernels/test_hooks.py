"""insert_feature_mix, mix_labels and labels_from_batch: the layer cannot be skipped silently, it
is a real submodule, and copies of the model find their own layers."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

import pmm_kernels
from pmm_kernels import FeatureMix, insert_feature_mix, labels_from_batch, mix_labels

LABELS = torch.tensor([0, 0, 1, 1])


class Backbone(nn.Module):
    """fast-reid's ResNet in small: it runs ``layer3`` block by block, never ``layer3`` itself."""

    def __init__(self, blockwise: bool) -> None:
        super().__init__()
        self.blockwise = blockwise
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.layer3 = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1))
        self.fc = nn.Linear(4, 3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(images)
        if self.blockwise:
            for i in range(len(self.layer3)):
                x = self.layer3[i](x)
        else:
            x = self.layer3(x)
        return self.fc(x.mean(dim=(2, 3)))


def images(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 8, 4, generator=torch.Generator().manual_seed(n))


def test_a_layer_that_never_runs_raises_naming_the_children_that_do():
    torch.manual_seed(0)
    net = Backbone(blockwise=True)
    hook = insert_feature_mix(net, "layer3", FeatureMix("cutout", grid=(4, 2)))
    with pytest.raises(
        ValueError,
        match=r"'layer3' did not run in this training forward of Backbone, so the layer after it "
        r"never mixed\. .* those that ran: \['layer3.0', 'layer3.1', 'layer3.2'\]\. Insert after "
        r"the last of them: after='layer3.2'",
    ):
        net(images())
    net.eval()(images())  # eval: no check, no cost
    hook.remove()
    insert_feature_mix(net, "layer3.2", FeatureMix("cutout", grid=(4, 2)))
    net.train()(images())
    assert net.mix_after_layer3_2.last_info.mask.any()


def test_a_module_the_model_never_calls_is_named():
    net = Backbone(blockwise=False)
    net.unused = nn.Sequential(nn.ReLU())
    insert_feature_mix(net, "unused", FeatureMix("cutout"))
    with pytest.raises(ValueError, match=r"nor did its children \['unused.0'\]"):
        net(images())


def test_the_layer_is_a_submodule_that_train_and_eval_reach():
    net = Backbone(blockwise=False)
    hook = insert_feature_mix(net, "layer3", FeatureMix("cutout", grid=(4, 2)))
    assert net.mix_after_layer3 is hook.mix and hook.attribute == "mix_after_layer3"
    assert dict(net.named_modules())["mix_after_layer3"] is hook.mix
    net.eval()
    assert not hook.mix.training
    net.train()
    # torchreid's open_specified_layers(model, ["fc"]) sets every other child to eval: the layer
    # then follows its own flag, named in the warning, not layer3's.
    for name, child in net.named_children():
        child.train(name in ("fc", "mix_after_layer3"))
    net(images())
    assert hook.mix.last_info.mask.any()
    hook.mix.last_info = None
    net.mix_after_layer3.eval()
    with pytest.warns(UserWarning, match="its FeatureMix 'mix_after_layer3' is in eval mode"):
        net(images())
    assert hook.mix.last_info is None


def test_insertion_takes_the_mode_of_the_model_and_remove_takes_the_layer_out():
    net = Backbone(blockwise=False).eval()
    hook = insert_feature_mix(net, "layer3", FeatureMix("cutout"))
    assert not hook.mix.training
    with pytest.raises(ValueError, match="already has 'mix_after_layer3'"):
        insert_feature_mix(net, "layer3", FeatureMix("cutout"))
    hook.remove()
    assert not hasattr(net, "mix_after_layer3")
    net.train()(images())  # no hooks left: no check either


def test_layer_lives_in_the_nearest_module_that_is_not_a_container():
    net = Backbone(blockwise=False)
    hook = insert_feature_mix(net, "layer3.1", FeatureMix("cutout", grid=(4, 2)))
    assert hook.attribute == "mix_after_layer3_1" and len(net.layer3) == 3
    net(images())
    assert hook.mix.last_info.mask.any()
    with pytest.raises(ValueError, match="'1' sits only in containers"):
        insert_feature_mix(nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU()), "1", FeatureMix())


def test_no_state_dict_keys_and_round_trips():
    torch.manual_seed(0)
    plain = Backbone(blockwise=False)
    net = copy.deepcopy(plain)
    insert_feature_mix(net, "layer3", FeatureMix(classifier=net.fc))
    with mix_labels(net, LABELS):
        net(images())
        assert list(net.state_dict()) == list(plain.state_dict())  # labels are not saved
    restored = Backbone(blockwise=False)
    insert_feature_mix(restored, "layer3", FeatureMix(classifier=restored.fc))
    restored.load_state_dict(net.state_dict())
    plain.load_state_dict(net.state_dict())  # and the other way round
    for a, b in zip(restored.parameters(), net.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("copier", ["deepcopy", "pickle"])
def test_copies_find_their_own_layer(copier):
    torch.manual_seed(0)
    net = Backbone(blockwise=False)
    hook = insert_feature_mix(net, "layer3", FeatureMix(classifier=net.fc))
    clone = copy.deepcopy(net) if copier == "deepcopy" else pickle.loads(pickle.dumps(net))
    with mix_labels(clone, LABELS):
        clone(images())
    assert clone.mix_after_layer3.last_info.mask.any()
    assert clone.mix_after_layer3.classifier is clone.fc  # Grad-CAM from the clone's own head
    assert hook.mix.last_info is None and clone.mix_after_layer3.labels is None
    with hook.labels_for(LABELS):  # the original's hook still works
        net(images())
    assert hook.mix.last_info.mask.any() and hook.labels is None


def test_mix_labels_through_a_wrapper_and_the_hook_attribute():
    net = Backbone(blockwise=False)
    hook = insert_feature_mix(net, "layer3", FeatureMix("hard_mix", grid=(4, 2)))
    wrapped = nn.DataParallel(net)  # one device (or none): it calls net itself
    with mix_labels(wrapped, LABELS):
        assert hook.labels is LABELS
        wrapped(images())
    assert hook.labels is None and hook.mix.last_info.mask.any()
    hook.labels = LABELS  # the attribute of the hook still works
    net(images())


def test_data_parallel_over_several_gpus_is_refused():
    net = Backbone(blockwise=False)
    insert_feature_mix(net, "layer3", FeatureMix("hard_mix", grid=(4, 2)))
    wrapped = nn.DataParallel(net)
    wrapped.device_ids = [0, 1]  # as on two GPUs; the check needs none
    with (
        pytest.raises(ValueError, match="labels are not split with the batch"),
        mix_labels(wrapped, LABELS),
    ):
        pass
    # A replica, as DataParallel makes one per GPU, refuses to mix with the whole batch's labels.
    replica = net.layer3._replicate_for_data_parallel()
    with pytest.raises(ValueError, match="use DistributedDataParallel"):
        replica(torch.randn(2, 4, 8, 4))
    # Labels of another batch size (the whole batch on half of it) are named too.
    mix = FeatureMix("hard_mix")
    mix.labels = torch.arange(8)
    with pytest.raises(ValueError, match=r"have shape \(8,\) but the map has 4 samples"):
        mix(torch.rand(4, 3, 8, 4))


def test_mix_labels_errors():
    with (
        pytest.raises(ValueError, match="Backbone holds no FeatureMix"),
        mix_labels(Backbone(blockwise=False), LABELS),
    ):
        pass
    net = Backbone(blockwise=False)
    insert_feature_mix(net, "layer3", FeatureMix())
    with (
        pytest.raises(ValueError, match=r"labels must have shape \(N,\)"),
        mix_labels(net, LABELS[None]),
    ):
        pass
    with (
        pytest.raises(TypeError, match="labels must be an integer tensor"),
        mix_labels(net, LABELS.float()),
    ):
        pass
    with pytest.raises(ValueError, match=r"needs labels: run the model inside `with pmm_kernels"):
        net(images())


class BatchModel(nn.Module):
    """Called with the whole batch, as fast-reid calls its Baseline."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = Backbone(blockwise=True)

    def forward(self, batched_inputs: dict) -> torch.Tensor:
        return self.backbone(batched_inputs["images"])


def test_labels_from_batch_gives_each_forward_its_labels():
    model = BatchModel()
    insert_feature_mix(model, "backbone.layer3.2", FeatureMix(classifier=model.backbone.fc))
    layer = model.backbone.mix_after_layer3_2
    with pytest.raises(ValueError, match="labels_from_batch: BatchModel holds no FeatureMix"):
        labels_from_batch(BatchModel())
    hooks = labels_from_batch(model, key="targets")
    model({"images": images(), "targets": LABELS})
    assert layer.last_info.mask.any() and layer.labels is None  # taken back after the forward
    with pytest.raises(ValueError, match=r"mapping holding 'targets', got keys \['images'\]"):
        model({"images": images()})
    model.eval()({"images": images()})  # eval needs no labels
    hooks.remove()
    with pytest.raises(ValueError, match="needs labels"):
        model.train()({"images": images(), "targets": LABELS})
    assert pmm_kernels.feature_mix_layers(model) == [layer]
