"""Pictures: what the feature mix replaced, how a trained model ranks, how training went.

The plotting functions take plain tensors or arrays and write PNG files with matplotlib's Agg
renderer, through its object-oriented API, so they never touch pyplot's global backend:

- :func:`plot_mixing`: for each training image, the image, then for every mixing stage the
  saliency that ranked the blocks, with the replaced blocks outlined, and the partner image
  that those blocks came from, with the same blocks outlined.
- :func:`plot_ranked_list`: each query with its top-ranked gallery images, framed green (true
  match), red (false match) or grey (junk: same identity and camera, ignored by the metrics).
- :func:`plot_training_curves`: rank-1, mAP and mINP over the epochs of a ``metrics.json``.
- :func:`plot_bars`: grouped bars with error bars (the ablation study's chart).

Panels are laid out on a fixed pixel grid (:class:`PanelGrid`), so a caller can locate any
panel in the PNG. :func:`mix_rectangles` turns a ``MixInfo`` into rectangles in image pixels.

:func:`draw_checkpoint` draws the first three for a trained network and its data set; the
command line ``python -m pmm_model.visualize`` (:mod:`pmm_model.cli.visualize`) is its front
end::

    python -m pmm_model.visualize --checkpoint runs/pmm-synthetic/checkpoint.pt \\
        --data synthetic --out runs/pmm-synthetic/pictures

Example:
    >>> import torch
    >>> from pmm_kernels import MixInfo
    >>> mask = torch.zeros(1, 8, 4, dtype=torch.bool)
    >>> mask[0, 1, 1] = True  # block 5 of the 8x4 grid of 1x1 blocks, taken from sample 1
    >>> info = MixInfo(torch.tensor([1]), torch.tensor([[5]]), mask, torch.tensor([1 / 32]))
    >>> mix_rectangles(info, block_size=(1, 1), image_size=(128, 64))
    [[Box(left=16.0, top=16.0, right=32.0, bottom=32.0)]]
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor, nn

from pmm_kernels import MixInfo
from pmm_kernels.ops.utils import block_cells, block_grid
from pmm_kernels.validation import check_int_pair
from pmm_model.data.datasets import Record, ReIDDataset
from pmm_model.data.images import ImageDataset, image_problem
from pmm_model.data.loaders import build_test_loaders
from pmm_model.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms
from pmm_model.evaluation.evaluator import extract_features, pairwise_distance, rank_gallery
from pmm_model.nets.models import PMMNet, pmm_saliency
from pmm_model.run.atomic import atomic_write

__all__ = [
    "MIX_OUTLINE",
    "VERDICT_COLORS",
    "Box",
    "PanelGrid",
    "denormalize",
    "draw_checkpoint",
    "mix_rectangles",
    "plot_bars",
    "plot_mixing",
    "plot_ranked_list",
    "plot_training_curves",
    "read_metrics",
]

# Magenta appears neither in the jet colour map of the saliency nor, much, in street scenes.
MIX_OUTLINE: tuple[int, int, int] = (255, 0, 255)
VERDICT_COLORS: dict[str, tuple[int, int, int]] = {
    "true": (0, 170, 0),
    "false": (220, 0, 0),
    "junk": (128, 128, 128),
}
CURVE_METRICS = (("rank1", "rank-1"), ("mAP", "mAP"), ("mINP", "mINP"))
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

    def _figure(self) -> Figure:
        width, height = self.size
        return Figure(figsize=(width / DPI, height / DPI), dpi=DPI)

    def _axes(self, fig: Figure, row: int, col: int, image_size: tuple[int, int]):
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


def _rgb(color: tuple[int, int, int]) -> tuple[float, float, float]:
    red, green, blue = color
    return red / 255, green / 255, blue / 255


def _images(name: str, images: Tensor | np.ndarray, ndim: int = 4) -> np.ndarray:
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


def mix_rectangles(
    info: MixInfo, block_size: tuple[int, int], image_size: tuple[int, int]
) -> list[list[Box]]:
    """The replaced blocks of every sample, as rectangles in image pixels.

    A block ``b`` of the ``rows x cols`` grid covers map cells ``[r*bh, r*bh + bh) x
    [c*bw, c*bw + bw)`` with ``r, c = divmod(b, cols)``, clipped to the map (docs/op.md#block-grid).
    A block counts only where ``info.mask`` marks it replaced, so unmixed samples (partner
    -1) get no rectangles. A sample whose ``blocks`` are all -1 but whose mask is set (the
    ``batch_drop`` mode's rectangle) gets the bounding box of its mask. Map cells scale to
    image pixels by ``image_size / map size``.

    Args:
        info: the ``MixInfo`` of one mix; ``mask`` is ``(N, H, W)``.
        block_size: ``(bh, bw)`` in map cells, as given to the mix.
        image_size: ``(height, width)`` of the images in pixels.

    Returns:
        One list of :class:`Box` per sample, in ``info.blocks`` order.

    Raises:
        ValueError: bad sizes, or ``blocks`` that do not fit the mask's grid.
    """
    bh, bw = check_int_pair("block_size", block_size, "(bh, bw)")
    img_h, img_w = check_int_pair("image_size", image_size, "(H, W)")
    mask = torch.as_tensor(info.mask).detach().cpu().bool()
    blocks = torch.as_tensor(info.blocks).detach().cpu()
    if mask.ndim != 3 or blocks.ndim != 2 or len(blocks) != len(mask):
        raise ValueError(
            f"info.mask must be (N, H, W) and info.blocks (N, num_blocks), got "
            f"{tuple(mask.shape)} and {tuple(blocks.shape)}"
        )
    n, height, width = mask.shape
    rows, cols = block_grid(height, width, (bh, bw))
    if blocks.numel() and (blocks.min() < -1 or blocks.max() >= rows * cols):
        raise ValueError(
            f"info.blocks must lie in [-1, {rows * cols}) for a {height}x{width} map cut into "
            f"{bh}x{bw} blocks, got values in [{int(blocks.min())}, {int(blocks.max())}]"
        )
    # The cells of every listed block, by the kernels' own block arithmetic (a -1 is looked up
    # as block 0 and skipped below). Cells that clipping removes alias the block's first cell,
    # so each block's extreme cells bound exactly its cells on the map.
    cell_rows, cell_cols, _ = block_cells(blocks.clamp_min(0), height, width, (bh, bw))
    cell_rows, cell_cols = (
        cells.view(n, blocks.shape[1], bh * bw) for cells in (cell_rows, cell_cols)
    )
    tops, bottoms = cell_rows.amin(-1).tolist(), (cell_rows.amax(-1) + 1).tolist()
    lefts, rights = cell_cols.amin(-1).tolist(), (cell_cols.amax(-1) + 1).tolist()
    sy, sx = img_h / height, img_w / width
    result = []
    for i, (sample_mask, sample_blocks) in enumerate(zip(mask, blocks.tolist(), strict=True)):
        boxes = []
        for j, block in enumerate(sample_blocks):
            if block < 0:
                continue
            top, bottom, left, right = tops[i][j], bottoms[i][j], lefts[i][j], rights[i][j]
            if sample_mask[top:bottom, left:right].any():
                boxes.append(Box(left * sx, top * sy, right * sx, bottom * sy))
        if not boxes and all(b < 0 for b in sample_blocks) and sample_mask.any():
            ys, xs = sample_mask.nonzero(as_tuple=True)
            boxes.append(
                Box(
                    int(xs.min()) * sx,
                    int(ys.min()) * sy,
                    (int(xs.max()) + 1) * sx,
                    (int(ys.max()) + 1) * sy,
                )
            )
        result.append(boxes)
    return result


def _outline(ax, boxes: Sequence[Box], color: tuple[int, int, int]) -> None:
    for box in boxes:
        ax.add_patch(
            Rectangle(
                (box.left, box.top),
                box.right - box.left,
                box.bottom - box.top,
                fill=False,
                edgecolor=_rgb(color),
                linewidth=1.5,
                antialiased=False,  # exact colour on the edge pixels
            )
        )


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    atomic_write(path, lambda f: fig.savefig(f, dpi=DPI, format="png"))
    return path


def plot_mixing(
    path: str | os.PathLike,
    images: Tensor | np.ndarray,
    saliencies: Sequence[Tensor | None],
    infos: Sequence[MixInfo],
    block_size: tuple[int, int],
    *,
    labels: Sequence[int] | Tensor | None = None,
    max_samples: int = 8,
    scale: float = 2.0,
) -> PanelGrid:
    """Draw, per sample, its image and, per mixing stage, saliency + replaced blocks + partner.

    Columns: the image; then for each stage ``s`` the image under ``saliencies[s]`` (jet,
    normalised per sample) with the blocks ``infos[s]`` replaced outlined in
    :data:`MIX_OUTLINE` (no overlay where the mode drew its blocks at random), and the partner
    image with the same blocks outlined (the cells that were copied), or an empty panel titled
    "zeroed" (the dropping modes) or "not mixed". For PMM, ``saliencies`` are the
    stage-1 and stage-2 Grad-CAM maps and ``infos`` the MixInfo of the stage-2 and stage-3
    mixes (see :func:`pmm_saliency`).

    Args:
        path: PNG file to write (folders are created).
        images: ``(N, 3, H, W)`` RGB in [0, 1] (see :func:`denormalize`).
        saliencies: per stage, the ``(N, h, w)`` map that ranked the blocks, or None.
        infos: per stage, that mix's ``MixInfo``; its mask is ``(N, h, w)`` too.
        block_size: ``(bh, bw)`` map cells per block, as given to the mix.
        labels: ``(N,)`` identities for the titles.
        max_samples: draw at most this many samples (rows).
        scale: panel pixels per image pixel.

    Returns:
        The figure's :class:`PanelGrid`: ``max(1, min(N, max_samples))`` rows and
        ``1 + 2 * len(infos)`` columns of ``round(W * scale) x round(H * scale)`` panels.

    Raises:
        ValueError: shapes that do not match, or no stage.

    Example:
        >>> plot_mixing("mix.png", images, [sal1, sal2], out.mix_info, (1, 1))  # doctest: +SKIP
    """
    pictures = _images("images", images)
    n, img_h, img_w = pictures.shape[:3]
    if len(saliencies) != len(infos) or not infos:
        raise ValueError(
            f"need one saliency map per MixInfo and at least one stage, got {len(saliencies)} "
            f"maps and {len(infos)} infos"
        )
    maps: list[np.ndarray | None] = []
    for s, (sal, info) in enumerate(zip(saliencies, infos, strict=True)):
        if sal is None:
            maps.append(None)
            continue
        sal = torch.as_tensor(sal).detach().cpu().float()
        if sal.ndim != 3 or len(sal) != n or tuple(info.mask.shape) != tuple(sal.shape):
            raise ValueError(
                f"saliencies[{s}] must be (N, h, w) with N = {n} and the shape of "
                f"infos[{s}].mask, got {tuple(sal.shape)} and {tuple(info.mask.shape)}"
            )
        peak = sal.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
        maps.append((sal.clamp_min(0) / peak).numpy())
    rects = [mix_rectangles(info, block_size, (img_h, img_w)) for info in infos]
    partners = [torch.as_tensor(info.partners).cpu().tolist() for info in infos]
    ids = torch.as_tensor(labels).tolist() if labels is not None else None

    rows = max(1, min(n, max_samples))
    grid = PanelGrid(rows, 1 + 2 * len(infos), round(img_w * scale), round(img_h * scale))
    fig = grid._figure()

    def panel(row: int, col: int, picture: np.ndarray | None, title: str):
        ax = grid._axes(fig, row, col, (img_h, img_w))
        if picture is not None:
            ax.imshow(picture, extent=(0, img_w, img_h, 0), interpolation="nearest", aspect="auto")
        ax.set_title(title, fontsize=7, pad=3)
        return ax

    def name(i: int) -> str:
        return f"#{i}" + (f" id {ids[i]}" if ids is not None else "")

    for i in range(rows):
        panel(i, 0, pictures[i], name(i))
        for s in range(len(infos)):
            sal_map = maps[s]
            attentive = sal_map is not None
            ax = panel(
                i,
                1 + 2 * s,
                pictures[i],
                f"mix {s + 1}: {'saliency' if attentive else 'random blocks'}",
            )
            if sal_map is not None:
                ax.imshow(
                    sal_map[i],
                    extent=(0, img_w, img_h, 0),
                    cmap="jet",
                    vmin=0.0,
                    vmax=1.0,
                    alpha=0.45,
                    interpolation="bilinear",
                    aspect="auto",
                )
            _outline(ax, rects[s][i], MIX_OUTLINE)
            j = partners[s][i]
            if j >= 0:
                _outline(
                    panel(i, 2 + 2 * s, pictures[j], f"mix {s + 1}: from {name(j)}"),
                    rects[s][i],
                    MIX_OUTLINE,
                )
            else:
                panel(
                    i, 2 + 2 * s, None, f"mix {s + 1}: {'zeroed' if rects[s][i] else 'not mixed'}"
                )
    _save(fig, path)
    return grid


def plot_ranked_list(
    path: str | os.PathLike,
    queries: Tensor | np.ndarray,
    ranked: Tensor | np.ndarray,
    verdicts: Sequence[Sequence[str]],
    *,
    query_titles: Sequence[str] | None = None,
    ranked_titles: Sequence[Sequence[str]] | None = None,
    scale: float = 1.0,
) -> PanelGrid:
    """Draw each query followed by its ranked gallery images, framed by verdict.

    Frames use :data:`VERDICT_COLORS`: green for a true match, red for a false one, grey for
    junk (see :func:`rank_gallery`). The query itself is unframed.

    Args:
        path: PNG file to write.
        queries: ``(Q, 3, H, W)`` RGB in [0, 1].
        ranked: ``(Q, K, 3, H, W)`` the K nearest gallery images of each query, nearest first.
        verdicts: ``(Q, K)`` of ``"true"``, ``"false"`` or ``"junk"``.
        query_titles: a title per query (default "query").
        ranked_titles: a title per gallery image (default its rank).
        scale: panel pixels per image pixel.

    Returns:
        The figure's :class:`PanelGrid`: Q rows, ``1 + K`` columns.

    Raises:
        ValueError: shapes that do not match or an unknown verdict.
    """
    query_pictures = _images("queries", queries)
    gallery_pictures = _images("ranked", ranked, ndim=5)
    num_q, img_h, img_w = query_pictures.shape[:3]
    k = gallery_pictures.shape[1]
    if len(gallery_pictures) != num_q or gallery_pictures.shape[2:4] != (img_h, img_w):
        raise ValueError(
            f"ranked must be (Q, K, 3, H, W) matching queries {tuple(np.shape(queries))}, got "
            f"{tuple(np.shape(ranked))}"
        )
    if len(verdicts) != num_q or any(len(v) != k for v in verdicts):
        raise ValueError(f"verdicts must be ({num_q}, {k}), got {[len(v) for v in verdicts]}")
    unknown = {v for row in verdicts for v in row} - VERDICT_COLORS.keys()
    if unknown:
        raise ValueError(f"verdicts must be in {sorted(VERDICT_COLORS)}, got {sorted(unknown)}")

    grid = PanelGrid(num_q, 1 + k, round(img_w * scale), round(img_h * scale), gap=10)
    fig = grid._figure()
    for q in range(num_q):
        ax = grid._axes(fig, q, 0, (img_h, img_w))
        ax.imshow(query_pictures[q], extent=(0, img_w, img_h, 0), aspect="auto")
        ax.set_title(query_titles[q] if query_titles else "query", fontsize=7, pad=3)
        for r in range(k):
            ax = grid._axes(fig, q, 1 + r, (img_h, img_w))
            ax.imshow(gallery_pictures[q, r], extent=(0, img_w, img_h, 0), aspect="auto")
            ax.set_title(
                ranked_titles[q][r] if ranked_titles else f"rank {r + 1}", fontsize=7, pad=3
            )
            # A thick frame centred on the image border, half of it in the gap around it.
            ax.add_patch(
                Rectangle(
                    (0, 0),
                    img_w,
                    img_h,
                    fill=False,
                    edgecolor=_rgb(VERDICT_COLORS[verdicts[q][r]]),
                    linewidth=4.0,
                    antialiased=False,
                    clip_on=False,
                )
            )
    _save(fig, path)
    return grid


def plot_training_curves(
    path: str | os.PathLike, metrics: Sequence[Mapping[str, float]], *, title: str = ""
) -> None:
    """Plot rank-1, mAP and mINP (in %) against the epoch, from ``metrics.json`` entries.

    The figure is 800x400 pixels. With a ``loss`` or ``seconds_per_epoch`` in the entries, a
    second panel shows it (loss preferred).

    Args:
        path: PNG file to write.
        metrics: the evaluations of a run, each with ``epoch`` and fractions ``rank1``,
            ``mAP``, ``mINP`` (the format of the training CLI's ``metrics.json``).
        title: figure title.

    Raises:
        ValueError: no entries, or an entry without ``epoch`` or any of the metrics.

    Example:
        >>> plot_training_curves("curves.png", json.load(open("metrics.json")))  # doctest: +SKIP
    """
    _check_metrics(metrics)
    epochs = [entry["epoch"] for entry in metrics]
    extra = next(
        (key for key in ("loss", "seconds_per_epoch") if all(key in entry for entry in metrics)),
        None,
    )
    fig = Figure(figsize=(8, 4), dpi=DPI)
    axes = fig.subplots(1, 2 if extra else 1, squeeze=False)[0]
    for key, label in CURVE_METRICS:
        axes[0].plot(epochs, [100 * entry[key] for entry in metrics], marker="o", label=label)
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("%")
    axes[0].set_ylim(0, 100)
    axes[0].grid(alpha=0.3)
    axes[0].legend(loc="lower right")
    if extra:
        axes[1].plot(epochs, [entry[extra] for entry in metrics], marker="o", color="tab:gray")
        axes[1].set_xlabel("epoch")
        axes[1].set_ylabel(extra.replace("_", " "))
        axes[1].set_ylim(bottom=0)
        axes[1].grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def plot_bars(
    path: str | os.PathLike,
    groups: Sequence[str],
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    ylabel: str = "",
    ylim: tuple[float, float] | None = None,
    title: str = "",
) -> None:
    """Grouped bars with error bars: one group per entry of ``groups``, one bar per series.

    NaN means are drawn as empty (zero) bars and NaN errors as none, so a group without data
    still gets its label.

    Args:
        path: PNG file to write (folders are created).
        groups: the group labels along the x axis.
        series: legend label -> ``(means, errors)``, each one value per group.
        ylabel: y-axis label.
        ylim: y-axis range (default: matplotlib's).
        title: axes title.

    Raises:
        ValueError: no series, or a series whose length is not that of ``groups``.

    Example:
        >>> series = {"rank-1": ([71.0, 75.5], [1.2, float("nan")])}
        >>> plot_bars("bars.png", ["baseline", "pmm"], series, ylim=(0, 100))  # doctest: +SKIP
    """
    if not series:
        raise ValueError("series: no bars to plot")
    for label, (means, errors) in series.items():
        if len(means) != len(groups) or len(errors) != len(groups):
            raise ValueError(
                f"series[{label!r}] must have {len(groups)} means and errors (one per group), "
                f"got {len(means)} and {len(errors)}"
            )
    x = np.arange(len(groups))
    width = 0.8 / len(series)
    fig = Figure(figsize=(max(6.0, 1.1 * len(groups) + 2), 4.5), layout="constrained")
    ax = fig.subplots()
    for i, (label, (means, errors)) in enumerate(series.items()):
        ax.bar(
            x + (i - (len(series) - 1) / 2) * width,
            np.nan_to_num(np.asarray(means, dtype=np.float64)),
            width,
            yerr=np.nan_to_num(np.asarray(errors, dtype=np.float64)),
            capsize=3,
            label=label,
        )
    ax.set_xticks(x, list(groups), rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_title(title)
    ax.legend(loc="upper left", ncols=len(series))
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def _check_metrics(metrics: Any) -> None:
    if not isinstance(metrics, list):
        raise ValueError(f"metrics: expected a list of evaluations, got {type(metrics).__name__}")
    if not metrics:
        raise ValueError("metrics: no entries to plot")
    for i, entry in enumerate(metrics):
        if not isinstance(entry, dict):
            raise ValueError(f"metrics[{i}] is not an object: {entry!r}")
        missing = [key for key in ("epoch", *(k for k, _ in CURVE_METRICS)) if key not in entry]
        if missing:
            raise ValueError(f"metrics[{i}] lacks {missing}; got keys {sorted(entry)}")


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The evaluations of a run's ``metrics.json``, checked for :func:`plot_training_curves`.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not JSON, or not a list of entries with ``epoch``, ``rank1``, ``mAP``
            and ``mINP`` (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics file {str(path)!r}: no such file")
    try:
        metrics = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"metrics file {str(path)!r} is not JSON ({err})") from None
    try:
        _check_metrics(metrics)
    except ValueError as err:
        raise ValueError(f"metrics file {str(path)!r}: {err}") from None
    return metrics


def _batch(records: Sequence[Record], transform) -> tuple[Tensor, Tensor]:
    """The images and identities of ``records``, as one batch through ``transform``."""
    dataset = ImageDataset(records, transform)
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([image for image, _, _ in items]), torch.tensor([p for _, p, _ in items])


def _training_batch(
    train: Sequence[Record], num_ids: int, images_per_id: int, seed: int
) -> list[Record]:
    """``images_per_id`` records of each of ``num_ids`` random identities, grouped by identity."""
    by_pid: dict[int, list[Record]] = {}
    for record in train:
        by_pid.setdefault(record.pid, []).append(record)
    rng = np.random.default_rng(seed)
    eligible = sorted(pid for pid, recs in by_pid.items() if len(recs) >= images_per_id)
    chosen = rng.choice(eligible, size=min(num_ids, len(eligible)), replace=False)
    return [rec for pid in chosen for rec in by_pid[int(pid)][:images_per_id]]


def draw_checkpoint(
    model: nn.Module,
    train_args: Mapping[str, Any],
    data: ReIDDataset,
    out: str | os.PathLike,
    *,
    device: torch.device | str = "cpu",
    metrics: str | os.PathLike | None = None,
    title: str = "",
    ids: int = 4,
    images_per_id: int = 2,
    queries: int = 6,
    topk: int = 10,
    seed: int = 0,
    skip_bad_images: bool = False,
) -> dict[str, Path]:
    """Draw the pictures of a trained network: ``mixing.png``, ``ranked.png``, ``curves.png``.

    - ``mixing.png`` (a :class:`~pmm_model.nets.models.PMMNet` only; other networks do not mix): a
      batch of ``images_per_id`` training images of each of ``ids`` random identities goes once
      through the training forward (:func:`~pmm_model.nets.models.pmm_saliency`), and
      :func:`plot_mixing` shows what each mix replaced, from whom, and the saliency that chose
      it.
    - ``ranked.png``: ``queries`` queries spread evenly over the query set and their ``topk``
      nearest gallery images (:func:`~pmm_model.evaluation.evaluator.rank_gallery`), by
      :func:`plot_ranked_list`.
    - ``curves.png``: :func:`plot_training_curves` of the ``metrics`` file, when it exists.

    Seeds torch's global generator with ``seed`` (the partners of the mixes come from it), as
    well as the choice of identities.

    Args:
        model: the network, as :func:`pmm_model.run.checkpoint.load_model` returns it.
        train_args: its training configuration (``height``, ``width``, ``block_size``,
            ``model``), the checkpoint's ``args``.
        data: the data set to draw images from.
        out: folder for the PNG files (created).
        device: where the network runs.
        metrics: the run's ``metrics.json`` (:func:`read_metrics`); None: no curves.
        title: the curves' title.
        ids: identities in the mixing picture.
        images_per_id: images per identity in the mixing picture.
        queries: queries in the ranked-list picture.
        topk: gallery images per query.
        seed: choice of images and partners.
        skip_bad_images: leave out images that cannot be decoded (named in a warning)
            instead of raising.

    Returns:
        The written pictures by name (``mixing``, ``ranked``, ``curves``), in that order.

    Raises:
        ValueError, OSError: before anything is drawn: a metrics file that is missing or
            not a run's, a mixing network whose class count does not fit ``data``,
            ``images_per_id`` more images than 2 identities have, an unreadable image (see
            :class:`~pmm_model.data.images.ImageDataset`).

    Example:
        >>> model, train_args = load_model("runs/pmm-synthetic/checkpoint.pt")  # doctest: +SKIP
        >>> data = build_dataset("synthetic")  # doctest: +SKIP
        >>> draw_checkpoint(model, train_args, data, "pictures")  # doctest: +SKIP
        {'mixing': PosixPath('pictures/mixing.png'), 'ranked': ..., 'curves': ...}
    """
    # Everything that can fail is checked before the first picture is drawn.
    height, width = train_args["height"], train_args["width"]
    curves = read_metrics(metrics) if metrics is not None else None
    mixing_batch = None
    if isinstance(model, PMMNet):
        if data.num_train_pids != train_args["num_classes"]:
            raise ValueError(
                f"the network was trained on {train_args['num_classes']} identities, but "
                f"{data.name or 'the data'!r} has {data.num_train_pids}: the mixing picture "
                "needs the training data of the checkpoint"
            )
        train = data.train
        if skip_bad_images:
            train = [r for r in train if image_problem(r.img_path, decode=True) is None]
        mixing_batch = _training_batch(train, ids, images_per_id, seed)
        if len({r.pid for r in mixing_batch}) < 2:
            raise ValueError(
                f"images_per_id {images_per_id}: fewer than 2 training identities have "
                f"{images_per_id} images; "
                "the mixing picture mixes between identities, so ask for fewer per identity"
            )
    query_loader, gallery_loader = build_test_loaders(
        data, height, width, skip_bad_images=skip_bad_images
    )
    model.to(device)
    torch.manual_seed(seed)
    transform = build_transforms(height, width, is_train=False)
    out = Path(out)
    written: dict[str, Path] = {}

    if mixing_batch is not None:
        images, labels = _batch(mixing_batch, transform)
        saliencies, infos = pmm_saliency(model, images.to(device), labels.to(device))
        written["mixing"] = out / "mixing.png"
        plot_mixing(
            written["mixing"],
            denormalize(images),
            saliencies,
            infos,
            tuple(train_args["block_size"]),
            labels=labels,
        )

    qf, q_pids, q_cams = extract_features(model, query_loader, device)
    gf, g_pids, g_cams = extract_features(model, gallery_loader, device)
    picked = np.linspace(0, len(qf) - 1, min(queries, len(qf))).round().astype(int)
    dist = pairwise_distance(qf[picked], gf)
    ranked = [
        rank_gallery(row, q_pids[q], q_cams[q], g_pids, g_cams, topk)
        for row, q in zip(dist, picked, strict=True)
    ]
    # The loaders' records: with skip_bad_images they are the images left, in feature order.
    query_records = cast(ImageDataset, query_loader.dataset).records
    gallery_records = cast(ImageDataset, gallery_loader.dataset).records
    query_images, _ = _batch([query_records[q] for q in picked], transform)
    gallery = torch.stack(
        [_batch([gallery_records[g] for g in order], transform)[0] for order, _ in ranked]
    )
    written["ranked"] = out / "ranked.png"
    plot_ranked_list(
        written["ranked"],
        denormalize(query_images),
        denormalize(gallery),
        [verdicts for _, verdicts in ranked],
        query_titles=[f"query id {q_pids[q]} c{q_cams[q] + 1}" for q in picked],
        ranked_titles=[
            [f"{r + 1}: id {g_pids[g]} c{g_cams[g] + 1}" for r, g in enumerate(order)]
            for order, _ in ranked
        ],
    )

    if curves is not None:
        written["curves"] = out / "curves.png"
        plot_training_curves(written["curves"], curves, title=title)
    return written
