"""Train a torchvision classifier a few steps with a feature-mix layer inserted by a hook.

The model's ``forward`` is untouched: :func:`pmm_kernels.insert_feature_mix` runs the layer on
the output of one submodule, and the labels reach it through ``hook.labels_for``. Random images
and random initialisation, so it runs anywhere without downloads::

    python examples/feature_mix_torchvision.py --arch resnet50 --mode a_hard_mix
    python examples/feature_mix_torchvision.py --arch mobilenet_v3_small --mode cutmix --steps 3

ResNet-50 mixes its last map (8x4 at 256x128) and ranks blocks by exact Grad-CAM from its
``fc`` head (``classifier=model.fc``: GAP -> Linear). MobileNetV3's head is not a single Linear,
so its attentive modes use activation saliency on ``features.8`` (stride 16).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import torchvision

import pmm_kernels

# arch -> (constructor, submodule to mix after, name of a Linear on that map's pooled feature)
ARCHS = {
    "resnet50": (torchvision.models.resnet50, "layer4", "fc"),
    "mobilenet_v3_small": (torchvision.models.mobilenet_v3_small, "features.8", None),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=ARCHS, default="resnet50")
    parser.add_argument("--mode", choices=pmm_kernels.MODES, default="a_hard_mix")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-classes", type=int, default=4)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[float]:
    """Train and return the loss of every step."""
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    build, after, head = ARCHS[args.arch]
    model = build(num_classes=args.num_classes)
    attentive = pmm_kernels.MODES[args.mode].cells == "salient"
    classifier = model.get_submodule(head) if head is not None and attentive else None
    mix = pmm_kernels.FeatureMix(
        args.mode, classifier=classifier, generator=torch.Generator().manual_seed(args.seed)
    )
    hook = pmm_kernels.insert_feature_mix(model, after, mix)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    losses = []
    model.train()
    for step in range(args.steps):
        images = torch.randn(args.batch_size, 3, args.height, args.width)
        labels = torch.arange(args.batch_size) % args.num_classes
        with hook.labels_for(labels):
            logits = model(images)  # what any training engine does
        # Labels mixed by area for cutmix/a_cutmix, one-hot (smoothed) for the other modes.
        targets = mix.targets(labels, args.num_classes, smoothing=0.1)
        loss = F.cross_entropy(logits, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        info = mix.last_info
        print(
            f"step {step}: loss {loss.item():.4f}, mixed area {info.lam.mean().item():.3f}, "
            f"partners {info.partners.tolist()}"
        )

    model.eval()
    with torch.no_grad():  # eval: the layer is the identity
        model(torch.randn(2, 3, args.height, args.width))
    return losses


if __name__ == "__main__":
    main()
