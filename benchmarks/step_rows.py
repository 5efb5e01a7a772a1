"""The layer's cost inside a whole training step of a real net, shared by ``gpu_check.py``.

A training step of timm's resnet50 (N=64 at 256x128, channel weights from its classifier, mixed
after ``layer4.-1``) and of timm's ``vit_small_patch16_224`` (N=64 at 256x128, token norm,
mixed after ``blocks.9``), each with and without the inserted layer: forward under bfloat16
autocast, ``soft_cross_entropy``, backward, SGD. The op's isolated rows say how close the kernels
are to the copy floor; these say what a user's step pays for the layer.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch

import pmm_kernels

N, HEIGHT, WIDTH, NUM_IDS = 64, 256, 128, 751
NETS = {
    "resnet50": ("layer4.-1", lambda model: dict(classifier=model.get_classifier())),
    "vit_small_patch16_224": ("blocks.9", lambda model: {}),
}


def step_call(net: str, with_layer: bool) -> Callable[[], object]:
    """One training step of ``net`` on fixed inputs, with or without the layer."""
    import timm

    torch.manual_seed(0)
    if net.startswith("vit"):
        model = timm.create_model(net, num_classes=NUM_IDS, img_size=(HEIGHT, WIDTH))
    else:
        model = timm.create_model(net, num_classes=NUM_IDS)
    model = model.cuda()
    if with_layer:
        after, layer_args = NETS[net]
        pmm_kernels.insert_feature_mix(
            model, after, pmm_kernels.FeatureMix("a_hard_mix", **layer_args(model))
        )
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images = torch.randn(N, 3, HEIGHT, WIDTH, device="cuda")
    labels = torch.arange(N, device="cuda") // 4

    # mix_labels refuses a model that holds no layer, so the bare step goes without it.
    give_labels = pmm_kernels.mix_labels if with_layer else lambda model, labels: nullcontext()

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            with give_labels(model, labels):
                logits = model(images)
            loss = pmm_kernels.soft_cross_entropy(logits.float(), labels, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step
