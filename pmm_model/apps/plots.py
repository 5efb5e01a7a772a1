"""Pictures of plain tensors: what the feature mix replaced, rankings, curves and bars.

- :func:`plot_mixing`: for each training image, the image, then for every mixing stage the
  saliency that ranked the blocks, with the replaced blocks outlined, and the partner image
  that those blocks came from, with the same blocks outlined.
- :func:`plot_ranked_list`: each query with its top-ranked gallery images, framed green (true
  match), red (false match) or grey (junk: same identity and camera, ignored by the metrics).
- :func:`plot_training_curves`: rank-1, mAP and mINP over the epochs of a ``metrics.json``.
- :func:`plot_bars`: grouped bars with error bars (the ablation study's chart).

:func:`mix_rectangles` turns a ``MixInfo`` into rectangles in image pixels.

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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor

from pmm_kernels import MixInfo, block_grid
from pmm_model.apps.panels import DPI, Box, PanelGrid, as_rgb_images, outline, rgb, save_figure

__all__ = [
    "MIX_OUTLINE",
    "VERDICT_COLORS",
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


def _positive_pair(name: str, value: object, what: str) -> tuple[int, int]:
    """Two positive ints given as a tuple or list, named ``what`` in the error."""
    if (
        not isinstance(value, tuple | list)
        or len(value) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)
    ):
        raise ValueError(f"{name} must be two positive ints {what}, got {value!r}")
    return int(value[0]), int(value[1])


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
    bh, bw = _positive_pair("block_size", block_size, "(bh, bw)")
    img_h, img_w = _positive_pair("image_size", image_size, "(H, W)")
    mask = torch.as_tensor(info.mask).detach().cpu().bool()
    blocks = torch.as_tensor(info.blocks).detach().cpu()
    if mask.ndim != 3 or blocks.ndim != 2 or len(blocks) != len(mask):
        raise ValueError(
            f"info.mask must be (N, H, W) and info.blocks (N, num_blocks), got "
            f"{tuple(mask.shape)} and {tuple(blocks.shape)}"
        )
    _, height, width = mask.shape
    rows, cols = block_grid(height, width, (bh, bw))
    if blocks.numel() and (blocks.min() < -1 or blocks.max() >= rows * cols):
        raise ValueError(
            f"info.blocks must lie in [-1, {rows * cols}) for a {height}x{width} map cut into "
            f"{bh}x{bw} blocks, got values in [{int(blocks.min())}, {int(blocks.max())}]"
        )
    # Each listed block's cells, clipped to the map (a -1 is looked up as block 0 and skipped
    # below).
    listed = blocks.clamp_min(0)
    top_cells, left_cells = listed // cols * bh, listed % cols * bw
    tops, bottoms = top_cells.tolist(), (top_cells + bh).clamp_max(height).tolist()
    lefts, rights = left_cells.tolist(), (left_cells + bw).clamp_max(width).tolist()
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
    pictures = as_rgb_images("images", images)
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
    fig = grid.figure()

    def panel(row: int, col: int, picture: np.ndarray | None, title: str):
        ax = grid.axes(fig, row, col, (img_h, img_w))
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
            outline(ax, rects[s][i], MIX_OUTLINE)
            j = partners[s][i]
            if j >= 0:
                outline(
                    panel(i, 2 + 2 * s, pictures[j], f"mix {s + 1}: from {name(j)}"),
                    rects[s][i],
                    MIX_OUTLINE,
                )
            else:
                panel(
                    i, 2 + 2 * s, None, f"mix {s + 1}: {'zeroed' if rects[s][i] else 'not mixed'}"
                )
    save_figure(fig, path)
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
    query_pictures = as_rgb_images("queries", queries)
    gallery_pictures = as_rgb_images("ranked", ranked, ndim=5)
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
    fig = grid.figure()
    for q in range(num_q):
        ax = grid.axes(fig, q, 0, (img_h, img_w))
        ax.imshow(query_pictures[q], extent=(0, img_w, img_h, 0), aspect="auto")
        ax.set_title(query_titles[q] if query_titles else "query", fontsize=7, pad=3)
        for r in range(k):
            ax = grid.axes(fig, q, 1 + r, (img_h, img_w))
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
                    edgecolor=rgb(VERDICT_COLORS[verdicts[q][r]]),
                    linewidth=4.0,
                    antialiased=False,
                    clip_on=False,
                )
            )
    save_figure(fig, path)
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
    save_figure(fig, path)


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
    save_figure(fig, path)


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
