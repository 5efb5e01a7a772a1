"""The authors' A-Hard-Mix step, ported to run on any device: a baseline, never a product path.

It keeps the reference implementation's cost structure (docs/performance.md#authors-op): a
per-sample Grad-CAM loop that also converts each map to a normalised uint8 image on the host, block
sums through split/stack/cat, a descending sort, a per-sample, per-block Python loop that zeroes a
full-size float mask (one host sync per block through ``int(idx)``), block-to-cell arithmetic that
only knows an 8x4 grid of 3x2 blocks (column-major block order), and ``mask * x + (1 - mask) *
x[partner]``. Only ``.cuda()`` became ``device=x.device`` and the partner indices are passed in.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

GRID_ROWS = 8  # the authors' block arithmetic assumes 24 rows of 3-cell blocks


def authors_grad_cam(feature: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-sample ``ReLU(w_n . F_n)``, each map also copied to the host as an image."""
    n, c, h, w = feature.shape
    maps = []
    for i in range(n):
        cam = F.relu((weights[i].reshape(1, c) @ feature[i].reshape(c, h * w)).reshape(h, w))
        maps.append(cam)
        image = cam.detach().cpu().numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            image = np.uint8(255 * ((image - image.min()) / (image - image.min()).max()))
    return torch.stack(maps)


def authors_mix(
    x: torch.Tensor,
    cam: torch.Tensor,
    partners: torch.Tensor,
    step: tuple[int, int] = (3, 2),
    k: int = 3,
) -> tuple[torch.Tensor, float]:
    """``mask * x + (1 - mask) * x[partners]`` with the k top 3x2 blocks of ``cam`` masked."""
    n, _, h, w = x.shape
    mask = torch.ones(x.shape, device=x.device)
    row_strips = torch.stack(torch.split(cam, step[0], dim=1), dim=1)
    patches = torch.cat(torch.split(row_strips, step[1], dim=3), dim=1)
    order = patches.sum(dim=(2, 3)).sort(dim=1, descending=True).indices
    for i in range(n):
        for idx in order[i, :k]:
            column, row = divmod(int(idx), GRID_ROWS)
            top, left = row * step[0], column * step[1]
            mask[i, :, top : top + step[0], left : left + step[1]] = 0
    lam = k * step[0] * step[1] / (h * w)
    mixed = mask * x + (torch.ones(mask.shape, device=x.device) - mask) * x[partners]
    return mixed, lam


def authors_a_hard_mix(
    x: torch.Tensor, weights: torch.Tensor, partners: torch.Tensor, k: int = 3
) -> torch.Tensor:
    """The authors' stage: Grad-CAM from channel weights, then the mix, on a 24x8 map."""
    return authors_mix(x, authors_grad_cam(x.detach(), weights), partners, k=k)[0]
