"""Mode-independent pieces of the feature-mix family, shared by every mode and backend.

The block grid and its cells, top-k selection, partner sampling and the ``batch_drop`` rectangle
(docs/op.md#a_hard_mix and docs/op.md#feature-mix-family). Everything is vectorised over samples,
runs on any device and never reads a value back to the host, so it also traces under
``torch.compile``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PARTNER_RULES = ("different_label", "any_other", "none")


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Scores and gradients accumulate in float32, or float64 for float64 features."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def patch_view(tokens: torch.Tensor, height: int, width: int, prefix: int) -> torch.Tensor:
    """The (N, C, H, W) view of the patch tokens of (N, prefix + H*W, C) tokens, no copy.

    The patch tokens sit in row-major order after ``prefix`` tokens (cls, distillation,
    registers), so the view has channels_last strides with the tokens' own batch stride
    (docs/transformers.md); the op and its kernels take it as it is.

    Example:
        >>> tokens = torch.arange(2 * (1 + 6) * 3.0).view(2, 7, 3)
        >>> patches = patch_view(tokens, 3, 2, 1)
        >>> patches.shape, bool(patches[0, :, 0, 1].eq(tokens[0, 2]).all())
        (torch.Size([2, 3, 3, 2]), True)
    """
    return tokens[:, prefix:].unflatten(1, (height, width)).permute(0, 3, 1, 2)


def block_grid(height: int, width: int, block_size: tuple[int, int]) -> tuple[int, int]:
    """Rows and columns of the block grid that cuts a ``height x width`` map into ``block_size``
    blocks, ``(ceil(H / bh), ceil(W / bw))``; edge blocks are clipped to the map.

    Block ``b`` is row ``b // cols``, column ``b % cols`` (docs/op.md#block-grid): the indices
    of :attr:`pmm_kernels.MixInfo.blocks`.

    Example:
        >>> block_grid(24, 8, (3, 2)), block_grid(7, 5, (3, 2))
        ((8, 4), (3, 3))
    """
    bh, bw = block_size
    return -(-height // bh), -(-width // bw)


def grid_block_size(height: int, width: int, grid: tuple[int, int]) -> tuple[int, int]:
    """The block size that cuts a ``height x width`` map into about ``grid = (rows, cols)`` blocks.

    ``(ceil(H / rows), ceil(W / cols))`` (docs/op.md#layer-geometry); a map smaller than the grid
    gets 1x1 blocks, so the grid then has fewer blocks than asked for.

    Example:
        >>> grid_block_size(24, 8, (8, 4)), grid_block_size(8, 4, (8, 4))
        ((3, 2), (1, 1))
    """
    rows, cols = grid
    return -(-height // rows), -(-width // cols)


def batch_drop_size(height: int, width: int, h_ratio: float, w_ratio: float) -> tuple[int, int]:
    """``batch_drop``'s rectangle: ``max(1, round(ratio * side))`` cells per side (as in BDB)."""
    return max(1, round(h_ratio * height)), max(1, round(w_ratio * width))


def batch_drop_corner(
    u: torch.Tensor, height: int, width: int, size: tuple[int, int]
) -> torch.Tensor:
    """Top-left cell ``(floor(u0 * (H - rh + 1)), floor(u1 * (W - rw + 1)))`` as (2,) int64.

    The product is formed in float64, where a float32 ``u`` times a small integer is exact, so
    the floor never reaches the extent and every backend agrees.
    """
    extent = torch.tensor([height - size[0] + 1, width - size[1] + 1], device=u.device)
    return (u.double() * extent).long()


def block_scores_torch(saliency: torch.Tensor, block_size: tuple[int, int]) -> torch.Tensor:
    """Sum of the saliency over each block, (N, rows * cols) in row-major block order."""
    n, h, w = saliency.shape
    bh, bw = block_size
    rows, cols = block_grid(h, w, block_size)
    # Zero padding to whole blocks leaves every block sum unchanged (NaN still propagates).
    padded = F.pad(saliency, (0, cols * bw - w, 0, rows * bh - h))
    return padded.view(n, rows, bh, cols, bw).sum(dim=(2, 4)).flatten(1)


def select_top_k(scores: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """Indices of the ``num_blocks`` largest entries per row, largest first, as a contiguous
    (N, num_blocks) int64.

    Non-finite scores rank below every finite one; a stable sort sends ties to the lower index.
    The same rule picks the most salient blocks and the blocks with the largest random keys.
    """
    keys = scores.masked_fill(~torch.isfinite(scores), float("-inf"))
    # Contiguous: a slice of the sort's indices has the row stride of all blocks, and a custom
    # op's outputs must have the strides its fake implementation declares.
    return (
        torch.sort(keys, dim=1, descending=True, stable=True).indices[:, :num_blocks].contiguous()
    )


def _rank_th_candidate(candidates: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per row i, the ``min(floor(u_i * m_i), m_i - 1)``-th True column (m_i Trues), or -1.

    The product is formed in float64, where it is exact, so every backend agrees.
    """
    count = candidates.sum(dim=1)
    rank = torch.minimum((u.double() * count).long(), count - 1)
    hit = candidates & (candidates.cumsum(dim=1) - 1 == rank[:, None])
    first_hit = hit.to(torch.uint8).argmax(dim=1)
    return torch.where(count > 0, first_hit, -1)


def sample_partners(
    u: torch.Tensor | None,
    labels: torch.Tensor,
    rule: str,
    given_partners: torch.Tensor | None = None,
) -> torch.Tensor:
    """Partner of each sample, (N,) int64, -1 for none.

    ``given_partners``: those partners (copied). ``"different_label"``: the r-th sample whose label
    differs from i's (docs/op.md#partner); ``"any_other"``: the r-th sample j != i
    (docs/op.md#feature-mix-family); ``"none"``: -1 everywhere. Here
    r = min(floor(u_i * m_i), m_i - 1) over the m_i candidates in ascending index order.
    """
    if given_partners is not None:
        # Copied: a custom op's outputs may not alias its inputs.
        return given_partners.to(torch.int64).clone(memory_format=torch.contiguous_format)
    n = labels.shape[0]
    if rule == "none":
        return torch.full((n,), -1, dtype=torch.int64, device=labels.device)
    if u is None:
        raise ValueError(f"partner_rule={rule!r} without given partners needs u")
    if rule == "different_label":
        candidates = labels[None, :] != labels[:, None]
    else:
        candidates = ~torch.eye(n, dtype=torch.bool, device=labels.device)
    return _rank_th_candidate(candidates, u)


def block_cells(
    blocks: torch.Tensor, height: int, width: int, block_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cell coordinates of the selected blocks, (N, num_blocks * bh * bw) each, plus which of
    them exist.

    Cells that an edge block loses to clipping alias the block's first cell, which always exists,
    so every coordinate is safe to index with.
    """
    bh, bw = block_size
    _, cols = block_grid(height, width, block_size)
    top = (blocks // cols * bh)[..., None, None]
    left = (blocks % cols * bw)[..., None, None]
    rows = top + torch.arange(bh, device=blocks.device).view(bh, 1)
    columns = left + torch.arange(bw, device=blocks.device).view(1, bw)
    exists = (rows < height) & (columns < width)
    rows = torch.where(exists, rows, top)
    columns = torch.where(exists, columns, left)
    return rows.flatten(1), columns.flatten(1), exists.flatten(1)


def rectangle_mask(
    corner: torch.Tensor, size: tuple[int, int], height: int, width: int
) -> torch.Tensor:
    """(H, W) bool: the cells of ``[top, top + rh) x [left, left + rw)``, clipped to the map."""
    top, left = corner[0], corner[1]
    r = torch.arange(height, device=corner.device)
    c = torch.arange(width, device=corner.device)
    in_rows = (r >= top) & (r < top + size[0])
    in_cols = (c >= left) & (c < left + size[1])
    return in_rows[:, None] & in_cols[None, :]


def draw_uniform(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """``torch.rand`` from ``generator`` (on its own device) or from ``device``'s default one."""
    if generator is None:
        # No generator keyword at all: torch.compile cannot trace ``generator=None`` with a
        # symbolic batch size.
        return torch.rand(shape, device=device)
    if torch.compiler.is_compiling():
        raise ValueError(
            "generator: torch.compile cannot trace draws from a torch.Generator; pass "
            "generator=None (build the layer without one) in compiled code"
        )
    return torch.rand(shape, generator=generator, device=generator.device).to(device)
