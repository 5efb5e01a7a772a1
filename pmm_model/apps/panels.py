"""The panels every picture is made of: a fixed pixel grid, rectangles, colours and PNG files.

Pictures are laid out on a :class:`PanelGrid`, so a caller (or a test) can locate any panel in
the PNG; everything is drawn through matplotlib's object-oriented API with the Agg renderer,
never pyplot's global backend.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor

from pmm_model.data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "DPI",
    "Box",
    "PanelGrid",
    "as_rgb_images",
    "denormalize",
    "outline",
    "rgb",
    "save_figure",
]

DPI = 100


class Box(NamedTuple):
    """A rectangle in image pixels: ``[left, right) x [top, bottom)``."""

    left: float
    top: float
    right: float
    bottom: float


@dataclass(frozen=True)
class PanelGrid:
    """Where each panel of a figure sits, in PNG pixels.

    Every panel is an image area of ``panel_width x panel_height`` pixels with a title band of
    ``title_height`` above it; ``gap`` pixels separate panels and frame the figure.

    Example:
        >>> grid = PanelGrid(rows=1, cols=2, panel_width=64, panel_height=128)
        >>> grid.size, grid.image_box(0, 1)
        ((146, 158), (76, 24, 140, 152))
    """

    rows: int
    cols: int
    panel_width: int
    panel_height: int
    title_height: int = 18
    gap: int = 6

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the whole figure in pixels."""
        return (
            self.gap + self.cols * (self.panel_width + self.gap),
            self.gap + self.rows * (self.title_height + self.panel_height + self.gap),
        )

    def image_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)`` pixels of panel ``(row, col)``'s image area."""
        left = self.gap + col * (self.panel_width + self.gap)
        top = self.gap + row * (self.title_height + self.panel_height + self.gap)
        top += self.title_height
        return left, top, left + self.panel_width, top + self.panel_height

    def figure(self) -> Figure:
        width, height = self.size
        return Figure(figsize=(width / DPI, height / DPI), dpi=DPI)

    def axes(self, fig: Figure, row: int, col: int, image_size: tuple[int, int]):
        """Axes filling panel (row, col) exactly, in image-pixel data coordinates."""
        width, height = self.size
        left, top, right, bottom = self.image_box(row, col)
        ax = fig.add_axes(
            (left / width, 1 - bottom / height, (right - left) / width, (bottom - top) / height)
        )
        h, w = image_size
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.set_axis_off()
        return ax


def rgb(color: tuple[int, int, int]) -> tuple[float, float, float]:
    red, green, blue = color
    return red / 255, green / 255, blue / 255


def as_rgb_images(name: str, images: Tensor | np.ndarray, ndim: int = 4) -> np.ndarray:
    """``(..., 3, H, W)`` floats in [0, 1] -> ``(..., H, W, 3)`` numpy, clipped."""
    array = torch.as_tensor(images).detach().cpu().float()
    if array.ndim != ndim or array.shape[-3] != 3:
        lead = "(N, K, " if ndim == 5 else "(N, "
        raise ValueError(
            f"{name} must be {lead}3, H, W) RGB images in [0, 1], got shape {tuple(array.shape)}"
        )
    return array.movedim(-3, -1).clamp(0, 1).numpy()


def denormalize(
    images: Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Tensor:
    """Undo the input normalisation: ``(N, 3, H, W)`` network inputs -> RGB in [0, 1].

    Example:
        >>> x = torch.zeros(1, 3, 2, 2)  # the mean colour after normalisation
        >>> denormalize(x)[0, :, 0, 0]
        tensor([0.4850, 0.4560, 0.4060])
    """
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    return (images * std_t + mean_t).clamp(0, 1)


def outline(ax, boxes: Sequence[Box], color: tuple[int, int, int]) -> None:
    for box in boxes:
        ax.add_patch(
            Rectangle(
                (box.left, box.top),
                box.right - box.left,
                box.bottom - box.top,
                fill=False,
                edgecolor=rgb(color),
                linewidth=1.5,
                antialiased=False,  # exact colour on the edge pixels
            )
        )


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path
