"""docs/recipes.md's fast-reid recipes, as written, in fast-reid 1.4.0's own SimpleTrainer:
Baseline ResNet-50 and ResNet-101-IBN, AGW, an SBS configuration with its backbone freeze, MGN,
and the mixed-targets Baseline."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
from oracles.fastreid_compat import install
from oracles.recipes import run_recipe

install()
fastreid = pytest.importorskip("fastreid")
from fastreid.config import get_cfg  # noqa: E402
from fastreid.engine import hooks  # noqa: E402
from fastreid.engine.train_loop import SimpleTrainer  # noqa: E402
from fastreid.modeling import build_model  # noqa: E402
from fastreid.modeling.losses import cross_entropy_loss  # noqa: E402
from fastreid.utils.events import EventStorage  # noqa: E402

pytestmark = pytest.mark.slow
LABELS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def _cfg(architecture="Baseline", depth="50x", **changes):
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = architecture
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.PRETRAIN = False
    cfg.MODEL.BACKBONE.DEPTH = depth
    cfg.MODEL.HEADS.NUM_CLASSES = 4
    cfg.MODEL.LOSSES.NAME = ("CrossEntropyLoss", "TripletLoss")
    for key, value in changes.items():
        node = cfg
        *path, leaf = key.split("__")
        for part in path:
            node = getattr(node, part)
        setattr(node, leaf, value)
    return cfg


def _batches():
    generator = torch.Generator().manual_seed(0)
    while True:  # fresh tensors: fast-reid normalises the images in place
        yield {"images": torch.rand(8, 3, 128, 64, generator=generator) * 255, "targets": LABELS}


def _train(model, steps=2, trainer_hooks=()):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    trainer = SimpleTrainer(model, _batches(), optimizer, None)
    trainer.register_hooks(list(trainer_hooks))
    trainer.train(0, 1, steps)  # one epoch of `steps` iterations
    return trainer


def _layer(model):
    (layer,) = [m for m in model.modules() if type(m).__name__ == "FeatureMix"]
    return layer


CONFIGS = {
    "R50": _cfg(),
    "R101-IBN": _cfg(depth="101x", MODEL__BACKBONE__WITH_IBN=True),
    "AGW": _cfg(MODEL__BACKBONE__WITH_NL=True, MODEL__HEADS__POOL_LAYER="GeneralizedMeanPooling"),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_resnet_recipe_mixes_at_the_end_of_layer4_at_any_depth(name):
    torch.manual_seed(0)
    model = build_model(CONFIGS[name])
    run_recipe("fastreid-resnet", {"model": model})
    blocks = len(model.backbone.layer4)
    assert hasattr(model.backbone, f"mix_after_layer4_{blocks - 1}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        _train(model)
    info = _layer(model).last_info
    assert info is not None and bool(info.mask.any())
    assert (info.partners >= 0).all()  # a_hard_mix: every sample took from another identity
    assert (LABELS[info.partners] != LABELS).all()


def test_sbs_backbone_freeze_warns_then_mixes():
    torch.manual_seed(0)
    cfg = _cfg(
        MODEL__BACKBONE__WITH_IBN=True,
        MODEL__BACKBONE__WITH_NL=True,
        MODEL__HEADS__POOL_LAYER="GeneralizedMeanPoolingP",
        MODEL__HEADS__CLS_LAYER="CircleSoftmax",
        MODEL__HEADS__SCALE=64,
        MODEL__HEADS__MARGIN=0.35,
        MODEL__FREEZE_LAYERS=["backbone"],
        SOLVER__FREEZE_ITERS=1,
    )
    model = build_model(cfg)
    run_recipe("fastreid-resnet", {"model": model})
    layer = _layer(model)
    freeze = hooks.LayerFreeze(model, cfg.MODEL.FREEZE_LAYERS, cfg.SOLVER.FREEZE_ITERS)
    with pytest.warns(UserWarning, match=r"LayerFreeze hook .*FREEZE_ITERS"):
        _train(model, steps=1, trainer_hooks=[freeze])
    assert layer.last_info is None  # frozen: the identity, and said so
    _train(model, steps=1, trainer_hooks=[hooks.LayerFreeze(model, ["backbone"], 0)])
    assert layer.last_info is not None and bool(layer.last_info.mask.any())


def test_mgn_recipe_mixes_the_shared_trunk():
    torch.manual_seed(0)
    model = build_model(_cfg("MGN"))
    run_recipe("fastreid-mgn", {"model": model})
    _train(model)
    info = model.mix_after_backbone.last_info
    assert info is not None and bool(info.mask.any())


def test_mixed_targets_baseline_scores_the_label_mix():
    cfg = _cfg()
    namespace = run_recipe("fastreid-mixed-targets", {"cfg": cfg})
    assert cfg.MODEL.META_ARCHITECTURE == "MixedBaseline"
    torch.manual_seed(0)
    model = build_model(cfg)
    assert isinstance(model, namespace["MixedBaseline"])
    pmm_kernels = namespace["pmm_kernels"]
    layer = pmm_kernels.FeatureMix("cutmix")
    pmm_kernels.insert_feature_mix(model, "backbone.layer4.-1", layer)
    pmm_kernels.labels_from_batch(model, key="targets")
    outputs = {}
    model.heads.register_forward_hook(lambda module, args, out: outputs.update(out))
    with warnings.catch_warnings(), EventStorage(0):
        warnings.simplefilter("error", UserWarning)  # the targets are read: no warning
        for _ in range(2):
            losses = model(next(_batches()))
    logits = outputs["cls_outputs"]
    eps, scale = cfg.MODEL.LOSSES.CE.EPSILON, cfg.MODEL.LOSSES.CE.SCALE
    mixed = layer.targets(LABELS, 4)
    assert layer.last_info.label_lam.gt(0).any()
    soft = mixed * (1 - eps) + (1 - mixed) * eps / 3
    expected = -(soft * torch.log_softmax(logits, 1)).sum(1).mean() * scale
    assert torch.allclose(losses["loss_cls"], expected, rtol=1e-5)
    # Where no label was mixed it is fast-reid's own loss.
    unmixed = pmm_kernels.mixed_targets(LABELS, None, 4)
    soft = unmixed * (1 - eps) + (1 - unmixed) * eps / 3
    own = cross_entropy_loss(logits, LABELS, eps, 0.2) * scale
    assert torch.allclose(-(soft * torch.log_softmax(logits, 1)).sum(1).mean() * scale, own)
    # The plain Baseline drops the mix: its loss differs, and the layer warns.
    plain = build_model(_cfg())
    pmm_kernels.insert_feature_mix(plain, "backbone.layer4.-1", pmm_kernels.FeatureMix("cutmix"))
    pmm_kernels.labels_from_batch(plain, key="targets")
    with pytest.warns(UserWarning, match="nobody asked for layer.targets"), EventStorage(0):
        for batch in itertools.islice(_batches(), 2):
            plain(batch)
