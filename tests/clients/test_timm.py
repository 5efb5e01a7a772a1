"""docs/recipes.md's timm recipes, as written, on timm's own models: resnet50 (Grad-CAM from its
classifier), convnext_tiny (activation saliency), efficientnet_b0's row, and timm's
set_grad_checkpointing replaying the mix the loss saw."""

from __future__ import annotations

import warnings
from contextlib import nullcontext

import pytest
import torch
from oracles.recipes import run_recipe

import pmm_kernels

timm = pytest.importorskip("timm")

pytestmark = pytest.mark.slow
LABELS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def _images() -> torch.Tensor:
    return torch.randn(8, 3, 256, 128, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("recipe", "name"), [("timm-resnet", "resnet50"), ("timm-any", "convnext_tiny")]
)
def test_recipe_trains_a_step(recipe, name):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # classifier check passes, nothing warns
        namespace = run_recipe(recipe, {"model": model, "images": _images(), "labels": LABELS})
    namespace["loss"].backward()
    (layer,) = pmm_kernels.feature_mix_layers(model)
    assert layer.last_info is not None and bool(layer.last_info.mask.any())
    assert next(model.parameters()).grad is not None


def test_efficientnet_row_grad_cam_from_its_classifier_after_bn2():
    model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=4)
    pmm_kernels.insert_feature_mix(
        model, "bn2", pmm_kernels.FeatureMix(classifier=model.get_classifier())
    )
    with pmm_kernels.mix_labels(model, LABELS):
        model(_images())  # the classifier check passes: it reads bn2's pooled map
    # After the last block instead, conv_head and bn2 sit between: refused (here already by
    # the channel count; with equal counts by the first forward's check).
    wrong = timm.create_model("efficientnet_b0", pretrained=False, num_classes=4)
    after = wrong.feature_info[-1]["module"]
    pmm_kernels.insert_feature_mix(
        wrong, after, pmm_kernels.FeatureMix(classifier=wrong.get_classifier())
    )
    with (
        pytest.raises(ValueError, match="must be the Linear on this map's pooled feature"),
        pmm_kernels.mix_labels(wrong, LABELS),
    ):
        wrong(_images())


@pytest.mark.parametrize("mode", ["a_hard_mix", "cutmix"])
def test_set_grad_checkpointing_replays_the_mix(mode):
    def stem_gradient(checkpointed: bool) -> torch.Tensor:
        torch.manual_seed(0)
        model = timm.create_model("resnet18", pretrained=False, num_classes=4)
        model.set_grad_checkpointing(checkpointed)
        generator = torch.Generator().manual_seed(1)
        layer = pmm_kernels.FeatureMix(mode, generator=generator)
        # timm's checkpointing runs a stage's blocks one by one: "-1" is the stage's end.
        pmm_kernels.insert_feature_mix(model, "layer3.-1", layer)
        with pmm_kernels.mix_labels(model, LABELS):
            logits = model(_images())
        targets = layer.targets(LABELS, 4)
        pmm_kernels.soft_cross_entropy(logits, targets).backward()  # no labels alive here
        return model.conv1.weight.grad

    assert torch.allclose(stem_gradient(False), stem_gradient(True), rtol=1e-4, atol=1e-6)


def test_compiled_resnet50_makes_no_more_graphs_with_the_layer():
    # The case: timm resnet50 at batch 16 -> 12 -> 8 -> 16 made 3 graphs with the layer.
    from torch._dynamo.testing import CompileCounter

    def count(with_layer: bool) -> int:
        torch._dynamo.reset()
        model = timm.create_model("resnet50", pretrained=False, num_classes=4)
        if with_layer:
            pmm_kernels.insert_feature_mix(model, "layer4.-1", pmm_kernels.FeatureMix())
        counter = CompileCounter()
        compiled = torch.compile(model, backend=counter)
        for n in (16, 12, 8, 16):
            images = torch.randn(n, 3, 64, 32)
            labels = torch.arange(n) % 4
            with pmm_kernels.mix_labels(model, labels) if with_layer else nullcontext():
                compiled(images)
        torch._dynamo.reset()
        return counter.frame_count

    assert count(True) == count(False)
