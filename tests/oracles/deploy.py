"""Checkpoints and image trees for the extraction and export tests.

The checkpoints are untrained resnet18 networks at 64x32 with random BatchNorm statistics, so the
embeddings depend on every layer the way a trained network's do; the images are seeded noise of
varied sizes, so resizing matters too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pmm_model.nets.models import build_model
from pmm_model.run.checkpoint import save_checkpoint
from pmm_model.run.config import make_config

HEIGHT, WIDTH = 64, 32
LAYOUT = {
    "bounding_box_train": [(1, 1), (2, 2), (3, 1)],
    "query": [(1, 1), (2, 2), (3, 1), (4, 2), (5, 1)],
    "bounding_box_test": [(1, 2), (2, 1), (3, 2), (4, 1), (5, 2), (0, 2)],
}


def make_checkpoint(path: Path, kind: str, seed: int = 0) -> Path:
    """An untrained resnet18 network with random BN statistics, saved as training saves it."""
    torch.manual_seed(seed)
    options = {"block_size": (1, 1)} if kind == "pmm" else {}
    model = build_model(kind, 4, backbone="resnet18", **options)
    for module in model.modules():
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    # The whole configuration, as the training CLI records it.
    run = {"model": kind, "backbone": "resnet18", "height": HEIGHT, "width": WIDTH}
    args = make_config(run | {"block_size": (1, 1)}).to_dict() | {"num_classes": 4}
    save_checkpoint(path, {"model": model.state_dict(), "args": args})
    return path


def make_tree(root: Path, seed: int = 0) -> Path:
    """A Market-layout tree of noise images of varied sizes."""
    rng = np.random.default_rng(seed)
    for split, items in LAYOUT.items():
        (root / split).mkdir(parents=True)
        for i, (pid, cam) in enumerate(items):
            size = (int(rng.integers(30, 50)), int(rng.integers(60, 100)))
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / split / f"{pid:04d}_c{cam}s1_{i:06d}_01.jpg")
    return root
