"""The baseline network on timm backbones (issue 24 item 6), with the drop-in layer inserted.

timm's own models (``timm/<name>``), built small: resnet18 at 64x32 and a tiny ViT at 128x64
(an 8x4 patch grid, the layer's 8x4 block grid of 1x1 blocks).
"""

import warnings

import pytest
import timm
import torch

import pmm_kernels
from pmm_model.nets.backbones import WeightsUnavailableError, build_timm_backbone
from pmm_model.nets.losses import PMMLoss
from pmm_model.nets.models import build_model
from pmm_model.run.config import ConfigError, make_config

VIT = "timm/vit_tiny_patch16_224"
LABELS = torch.tensor([0, 0, 1, 1, 2, 2])


def _images(height=128, width=64):
    return torch.randn(len(LABELS), 3, height, width, generator=torch.Generator().manual_seed(0))


def _vit(**options):
    return build_model("baseline", 3, backbone=VIT, height=128, width=64, **options)


@pytest.mark.parametrize("backbone, size", [("timm/resnet18", (64, 32)), (VIT, (128, 64))])
def test_a_timm_backbone_trains_and_embeds(backbone, size):
    model = build_model("baseline", 3, backbone=backbone, height=size[0], width=size[1])
    channels = timm.create_model(backbone.removeprefix("timm/"), num_classes=0).num_features
    out = model(_images(*size), LABELS)
    total, _ = PMMLoss()(out, LABELS)
    total.backward()
    assert torch.isfinite(total) and out.features[0].shape == (len(LABELS), channels)
    assert out.mix_info == [] and out.targets == []  # no mix_after: no layer
    assert model.eval()(_images(*size)).shape == (len(LABELS), channels)


def test_the_inserted_layer_mixes_in_training_and_is_the_identity_in_eval():
    model = _vit(mix="a_hard_mix", mix_after="blocks.2")
    plain = _vit()
    plain.load_state_dict(model.state_dict())  # the layer holds no state: same network
    assert torch.equal(model.eval()(_images()), plain.eval()(_images()))
    mixed = model.train()(_images(), LABELS)
    unmixed = plain.train()(_images(), LABELS)
    (info,) = mixed.mix_info
    assert info.mask.shape == (len(LABELS), 8, 4) and info.mask.any()
    assert not torch.equal(mixed.features[0], unmixed.features[0])


def test_a_label_mixing_mode_scores_the_layers_targets_and_nobody_is_warned():
    model = build_model(
        "baseline", 3, backbone="resnet18", mix="cutmix", mix_after="layer3", num_blocks=3
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the layer warns when its mixed targets go unread
        for _ in range(2):
            out = model(_images(64, 32), LABELS)
            PMMLoss()(out, LABELS)[0].backward()
    (info,) = out.mix_info
    (targets,) = out.targets
    assert torch.equal(targets, pmm_kernels.mixed_targets(LABELS, info, 3))
    assert (targets.max(1).values < 1).any()  # some labels are mixed


def test_mix_after_a_module_the_backbone_lacks_names_the_option():
    with pytest.raises(ValueError, match=r"mix_after='blocks\.99' in timm/vit_tiny"):
        _vit(mix="a_hard_mix", mix_after="blocks.99")


def test_a_state_dict_of_the_model_loads_and_any_other_is_refused(tmp_path):
    source = timm.create_model("vit_tiny_patch16_224", num_classes=10)
    torch.save(source.state_dict(), tmp_path / "vit.pth")  # its classifier is left out
    model, _ = build_timm_backbone(VIT, pretrained=tmp_path / "vit.pth")
    assert torch.equal(model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match="does not fit timm vit_tiny_patch16_224: missing keys"):
        build_timm_backbone(VIT, pretrained=tmp_path / "resnet.pth")
    (tmp_path / "notes.txt").write_text("not weights")
    with pytest.raises(ValueError, match="not a torch state-dict file"):
        build_timm_backbone(VIT, pretrained=tmp_path / "notes.txt")


def test_imagenet_weights_that_cannot_be_had_say_what_to_do(monkeypatch):
    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("cannot find the requested files in the local cache")
        return create_model(name, **kwargs)

    create_model = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(WeightsUnavailableError, match=r"Offline\? Run timm\.create_model"):
        build_timm_backbone(VIT, pretrained="imagenet")


@pytest.mark.parametrize(
    "options, option, message",
    [
        ({"backbone": VIT}, "backbone", "only --model baseline takes"),
        ({"model": "baseline", "backbone": "timm/no_such_net"}, "backbone", "timm has no model"),
        ({"backbone": "vgg16"}, "backbone", "or timm/<a timm model name>"),
        ({"mix_after": "layer3"}, "mix_after", "is for --model baseline"),
        ({"model": "baseline", "mix": "none", "mix_after": "layer3"}, "mix_after", "needs a mode"),
        # Checked on the network's structure (meta device) before any data is read:
        ({"model": "baseline", "mix_after": "layer9"}, "mix_after", "layer9 does not exist"),
        (
            {"model": "baseline", "backbone": VIT, "mix_after": "blocks.11"},
            "mix_after",
            "reads only the cls token",
        ),
    ],
)
def test_the_configuration_refuses_what_the_network_cannot_do(options, option, message):
    with pytest.raises(ConfigError, match=message) as caught:
        make_config(options, preset="demo")
    assert caught.value.option == option


def test_an_old_baseline_checkpoints_configuration_reads_without_mixing():
    config = make_config({"model": "baseline"}, preset="demo")
    saved = config.to_dict()
    del saved["mix_after"]  # written before the option existed
    assert type(config).from_dict(saved).mix_after is None
