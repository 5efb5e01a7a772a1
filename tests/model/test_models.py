"""Tests of pmm_model.nets.models: shapes, Grad-CAM modes, use of the op, pretrained loading."""

import socket

import pytest
import torch
import torchvision

import pmm_kernels
from pmm_model import build_model
from pmm_model.nets.backbones import build_backbone
from pmm_model.nets.losses import PMMLoss

# Tiny input: 64x32 gives a 4x2 map (last stride 1), cut into 8 blocks of 1x1.
IMAGES_SHAPE = (8, 3, 64, 32)
LABELS = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])  # 2 ids x 4 images
PMM_OPTIONS = {"block_size": (1, 1), "num_blocks": 3}


def _batch():
    return torch.randn(*IMAGES_SHAPE, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("backbone", "channels"),
    [("resnet18", 512), pytest.param("resnet50", 2048, marks=pytest.mark.slow)],
)
def test_pmm_and_baseline_shapes(backbone, channels):
    images = _batch()
    torch.manual_seed(0)
    pmm = build_model("pmm", 5, backbone=backbone, **PMM_OPTIONS)
    out = pmm(images, LABELS)
    assert [f.shape for f in out.features] == [torch.Size([8, 512])] * 3
    assert [g.shape for g in out.logits] == [torch.Size([8, 5])] * 3
    assert [info.mask.shape for info in out.mix_info] == [torch.Size([8, 4, 2])] * 2
    assert pmm.extra_block.conv3.out_channels == channels
    with torch.no_grad():
        assert pmm.eval()(images).shape == (8, 3 * 512)

    baseline = build_model("baseline", 5, backbone=backbone)
    out = baseline(images, LABELS)
    assert [f.shape for f in out.features] == [torch.Size([8, channels])]
    assert [g.shape for g in out.logits] == [torch.Size([8, 5])]
    with torch.no_grad():
        assert baseline.eval()(images).shape == (8, channels)


def test_last_stride_is_one():
    trunk, _ = build_backbone("resnet18")
    assert trunk(torch.zeros(1, 3, 128, 64)).shape[-2:] == (8, 4)  # 16x, not 32x


@pytest.mark.parametrize("name", ["pmm", "baseline"])
def test_one_step_lowers_the_loss(name):
    images, criterion = _batch(), PMMLoss()
    torch.manual_seed(0)
    # PMM mixes all 8 blocks here: which blocks win may flip after a step (the selection is
    # piecewise constant), and a full mix keeps the loss a smooth function of the weights.
    options = {"block_size": (1, 1), "num_blocks": 8} if name == "pmm" else {}
    model = build_model(name, 2, backbone="resnet18", **options)
    # Plain gradient descent with a step small for this random net's large gradient (|g| ~ 600
    # at batch 8): a first-order check that the loss's gradient is right everywhere.
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)

    def loss():
        torch.manual_seed(1)  # the same partners in both forwards
        return criterion(model(images, LABELS), LABELS)[0]

    before = loss()
    before.backward()
    optimizer.step()
    assert loss().item() < before.item() - 1e-3


def test_model_mixes_through_the_drop_in_layer_twice_per_training_forward(monkeypatch):
    calls = []
    real = pmm_kernels.FeatureMix.forward

    def spy(layer, feat, labels=None, attn=None, **kwargs):
        calls.append((layer, attn.shape))
        return real(layer, feat, labels, attn, **kwargs)

    monkeypatch.setattr(pmm_kernels.FeatureMix, "forward", spy)
    model = build_model("pmm", 2, backbone="resnet18", **PMM_OPTIONS)
    out = model(_batch(), LABELS)
    # Both stages get an (N, H, W) Grad-CAM map: of x for stage 2, of the mixed map for stage 3.
    map_shape = torch.Size([8, 4, 2])
    assert calls == [(model.mixer2, map_shape), (model.mixer3, map_shape)]
    assert out.mix_info == [model.mixer2.last_info, model.mixer3.last_info]
    assert (model.mixer2.mode, model.mixer2.block_size, model.mixer2.num_blocks) == (
        "a_hard_mix",
        (1, 1),
        3,
    )
    # The layers hold no state: the checkpoint keys are the network's alone.
    assert not any("mixer" in key for key in model.state_dict())
    with torch.no_grad():
        model.eval()(_batch())
    assert len(calls) == 2
    assert build_model("pmm", 2, backbone="resnet18", mix="none").mixer2 is None


@pytest.mark.parametrize("cam", ["fast", "paper"])
def test_grad_cam_leaves_no_parameter_gradients(cam):
    model = build_model("pmm", 2, backbone="resnet18", cam=cam, **PMM_OPTIONS)
    model(_batch(), LABELS)
    assert all(p.grad is None for p in model.parameters())


def test_fast_and_paper_grad_cam_choose_the_same_blocks(monkeypatch):
    attns = []
    real = pmm_kernels.FeatureMix.forward

    def spy(layer, feat, labels=None, attn=None, **kwargs):
        attns.append(attn)
        return real(layer, feat, labels, attn, **kwargs)

    monkeypatch.setattr(pmm_kernels.FeatureMix, "forward", spy)
    torch.manual_seed(0)
    model = build_model("pmm", 2, backbone="resnet18", **PMM_OPTIONS)
    infos = {}
    for cam in ("fast", "paper"):
        model.cam = cam
        torch.manual_seed(1)  # same partners
        infos[cam] = model(_batch(), LABELS).mix_info
    fast_map2, fast_map3, paper_map2, paper_map3 = attns
    torch.testing.assert_close(fast_map2, paper_map2, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(fast_map3, paper_map3, rtol=1e-4, atol=1e-7)
    assert fast_map2.sum() > 0 and fast_map3.sum() > 0  # not trivially equal
    for fast, paper in zip(infos["fast"], infos["paper"], strict=True):
        assert torch.equal(fast.partners, paper.partners)
        assert torch.equal(fast.blocks, paper.blocks)
        assert torch.equal(fast.mask, paper.mask)


def test_build_model_rejects_bad_names_and_options():
    with pytest.raises(ValueError, match=r"unknown model 'bdb'; valid names: baseline, pmm"):
        build_model("bdb", 10)
    with pytest.raises(ValueError, match=r"backbone='resnet101'.*resnet18, resnet34, resnet50"):
        build_model("pmm", 10, backbone="resnet101")
    with pytest.raises(
        ValueError,
        match=r"mix='mixup' is not supported; valid: a_hard_mix, "
        r"hard_mix, a_cutmix, cutmix, cutout, batch_drop, none",
    ):
        build_model("pmm", 10, backbone="resnet18", mix="mixup")
    with pytest.raises(ValueError, match="cam='grad'"):
        build_model("pmm", 10, backbone="resnet18", cam="grad")
    with pytest.raises(ValueError, match=r"block_size must be two positive ints \(bh, bw\)"):
        build_model("pmm", 10, backbone="resnet18", block_size=(3, 0))
    with pytest.raises(ValueError, match="num_classes must be a positive int, got 0"):
        build_model("baseline", 0)
    model = build_model("pmm", 2, backbone="resnet18", **PMM_OPTIONS)
    with pytest.raises(ValueError, match="labels are required"):
        model(_batch())
    with torch.no_grad(), pytest.raises(RuntimeError, match="needs autograd"):
        model(_batch(), LABELS)


@pytest.mark.slow
@pytest.mark.parametrize("mix", [*pmm_kernels.MODES, "none"])
def test_every_mix_mode_trains(mix):
    torch.manual_seed(0)
    model = build_model("pmm", 2, backbone="resnet18", mix=mix, **PMM_OPTIONS)
    out = model(_batch(), LABELS)
    total, _ = PMMLoss()(out, LABELS)
    total.backward()
    assert torch.isfinite(total)
    assert len(out.mix_info) == (0 if mix == "none" else 2)
    mixes_labels = mix != "none" and pmm_kernels.MODES[mix].mixes_labels
    if mixes_labels:  # stages 2 and 3 score their layers' targets, stage 1 the labels
        assert out.targets[0] is None and len(out.targets) == 3
        for mixed, info in zip(out.targets[1:], out.mix_info, strict=True):
            assert torch.equal(mixed, pmm_kernels.mixed_targets(LABELS, info, 2))
    else:
        assert out.targets == []
    if mix != "none":
        assert all(info.mask.any() for info in out.mix_info)


def test_no_mix_gives_stages_2_and_3_the_same_map():
    torch.manual_seed(0)
    model = build_model("pmm", 2, backbone="resnet18", mix="none", **PMM_OPTIONS)
    model.reduction3.load_state_dict(model.reduction2.state_dict())
    out = model(_batch(), LABELS)
    assert torch.equal(out.features[1], out.features[2])


def test_pretrained_path_loads_torchvision_weights(tmp_path):
    source = torchvision.models.resnet18()
    path = tmp_path / "r18.pth"
    torch.save(source.state_dict(), path)  # fc included: ignored
    trunk, _ = build_backbone("resnet18", pretrained=path)
    assert torch.equal(trunk.layer3[1].conv2.weight, source.layer3[1].conv2.weight)
    model = build_model("pmm", 3, backbone="resnet18", pretrained=str(path))
    assert torch.equal(model.backbone.conv1.weight, source.conv1.weight)


def test_pretrained_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"pretrained='.*nope.pth': no such file"):
        build_backbone("resnet18", pretrained=tmp_path / "nope.pth")
    partial = tmp_path / "partial.pth"
    state = torchvision.models.resnet18().state_dict()
    del state["layer4.1.bn2.weight"]
    torch.save(state, partial)
    with pytest.raises(ValueError, match=r"does not fit resnet18: missing keys \['layer4.1.bn2"):
        build_backbone("resnet18", pretrained=partial)
    wrong = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), wrong)
    with pytest.raises(ValueError, match=r"does not fit resnet18: .*unexpected keys"):
        build_backbone("resnet18", pretrained=wrong)


def test_pretrained_imagenet_offline_error_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", offline)  # no network, and no waiting on it
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(RuntimeError) as excinfo:
        build_model("baseline", 3, backbone="resnet18", pretrained="imagenet")
    message = str(excinfo.value)
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert str(expected) in message
    assert not expected.exists()
