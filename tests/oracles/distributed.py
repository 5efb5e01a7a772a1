"""A DistributedDataParallel training step of a timm ViT with the drop-in layer on its tokens,
run in each of several gloo processes (``torch.multiprocessing.spawn`` needs an importable
function), and the same step in one process for each rank's batch, to compare with."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import pmm_kernels

AFTER = "blocks.0"  # of 2: the last block must still carry the patches to the cls token


def vit_step_gradient(rank: int, ddp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(the patch embedding's weight gradient, the layer's mask)`` of one step on rank
    ``rank``'s batch; the model and the draws start from seed 0 on every rank."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=4, img_size=(64, 32), depth=2
    )
    layer = pmm_kernels.FeatureMix("a_hard_mix", grid=(2, 2), num_blocks=1)
    pmm_kernels.insert_feature_mix(model, AFTER, layer)
    net = DistributedDataParallel(model) if ddp else model
    generator = torch.Generator().manual_seed(100 + rank)  # each rank its own batch
    images = torch.randn(4, 3, 64, 32, generator=generator)
    labels = torch.tensor([0, 0, 1, 1]) + 2 * rank
    with pmm_kernels.mix_labels(net, labels):
        logits = net(images)
    pmm_kernels.soft_cross_entropy(logits, labels).backward()
    assert layer.last_info is not None
    return model.patch_embed.proj.weight.grad.clone(), layer.last_info.mask.clone()


def ddp_worker(rank: int, world_size: int, port: int, out: str) -> None:
    """One rank: the DDP step, its gradient and mask saved to ``out/rank<rank>.pt``."""
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        grad, mask = vit_step_gradient(rank, ddp=True)
        torch.save({"grad": grad, "mask": mask}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
