"""One PMM training step, fast vs the authors' Grad-CAM: ``pytest benchmarks --benchmark-only``.

Both rows time the same step (forward, six-term loss, backward, Adam) on the same backbone,
input and batch, side by side in one benchmark group. ``cam="paper"`` reproduces the authors'
cost: each of the two Grad-CAMs takes the gradient w.r.t. the whole feature map by a backward
through the trunk and every parameter, like their ``score.backward()`` (we discard those
parameter gradients instead of zeroing ``.grad`` later). ``cam="fast"`` differentiates only the
small head, w.r.t. the pooled vector. Both select the same blocks (tests/model/test_models.py).

CPU: resnet18, batch 16 (4 ids x 4) at 128x64. CUDA: the paper's resnet50, batch 64 at 384x128,
bf16 autocast.

``test_pmm_train_step_switches`` times the training CLI's two speed switches on the fast step:
``--channels-last`` (network and images in channels_last) and ``--compile`` (torch.compile of
the network's trunk, timed after its compilation in the warm-up rounds).
"""

from __future__ import annotations

import pytest
import torch

from pmm_model import build_model
from pmm_model.nets.losses import PMMLoss

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
# (backbone, batch, height, width, block_size): block sizes keep the paper's 8x4 block grid.
CONFIG = ("resnet50", 64, 384, 128, (3, 2)) if ON_GPU else ("resnet18", 16, 128, 64, (1, 1))


def _step(cam: str, channels_last: bool = False, compile: bool = False):
    """A closure running one training step of the benchmark's configuration."""
    backbone, batch, height, width, block_size = CONFIG
    torch.manual_seed(0)
    num_ids = batch // 4
    model = build_model("pmm", num_ids, backbone=backbone, block_size=block_size, cam=cam).to(
        DEVICE
    )
    images = torch.randn(batch, 3, height, width, device=DEVICE)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    if compile:
        model.backbone.compile()  # what --compile does (pmm_model.run.engine)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=5e-4)
    criterion = PMMLoss()
    labels = torch.arange(num_ids, device=DEVICE).repeat_interleave(4)

    def step():
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=ON_GPU):
            loss, _ = criterion(model(images, labels), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ON_GPU:
            torch.cuda.synchronize()

    return step


def _group(what: str) -> str:
    backbone, batch, height, width, _ = CONFIG
    return f"{what}: {backbone}, batch {batch}, {height}x{width}, {DEVICE.type}"


@pytest.mark.parametrize("cam", ["fast", "paper"])
def test_pmm_train_step(benchmark, cam):
    benchmark.group = _group("pmm train step")
    backbone, batch, height, width, _ = CONFIG
    benchmark.extra_info.update(cam=cam, backbone=backbone, batch=batch, input=[height, width])
    benchmark.pedantic(_step(cam), warmup_rounds=1, rounds=5 if ON_GPU else 3, iterations=1)


@pytest.mark.parametrize("switch", ["eager", "channels_last", "compile"])
def test_pmm_train_step_switches(benchmark, switch):
    benchmark.group = _group("pmm train step, --channels-last / --compile")
    benchmark.extra_info.update(switch=switch)
    step = _step("fast", channels_last=switch == "channels_last", compile=switch == "compile")
    # Two warm-up rounds: torch.compile compiles on the first call (and may recompile once).
    benchmark.pedantic(step, warmup_rounds=2, rounds=5 if ON_GPU else 3, iterations=1)
