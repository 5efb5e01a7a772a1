"""How a layer cuts any map into blocks: a grid of rows x cols blocks whose size follows the map,
or a pinned block size, and how many blocks it mixes there (docs/op.md#layer-geometry).

Example:
    >>> block_size_for(PAPER_GRID, None, 24, 8), num_blocks_for(PAPER_GRID, None, 3, 24, 8)
    ((3, 2), 3)
    >>> block_size_for(PAPER_GRID, None, 16, 8), num_blocks_for(PAPER_GRID, None, 3, 16, 8)
    ((2, 2), 3)
"""

from __future__ import annotations

from pmm_kernels import validation as check
from pmm_kernels.ops.utils import block_grid, grid_block_size

__all__ = [
    "FAR_OFF",
    "PAPER_GRID",
    "block_size_for",
    "check_geometry",
    "far_off",
    "num_blocks_for",
]

PAPER_GRID = (8, 4)  # PMM: an 8x4 grid of 3x2 blocks on its 24x8 map
FAR_OFF = 2.0  # warn when the mixed fraction is more than this factor off the grid's target

Pair = tuple[int, int]


def check_geometry(
    grid: object, block_size: object, num_blocks: int, rectangle: bool
) -> tuple[Pair | None, Pair | None]:
    """``(grid, block_size)`` checked: one of the two (the grid defaults to
    :data:`PAPER_GRID`), and ``num_blocks`` within the grid unless the mode draws a
    ``rectangle``.

    Raises:
        ValueError, TypeError: naming the argument and what it got.
    """
    if grid is not None and block_size is not None:
        raise ValueError(
            f"give grid or block_size, not both; got grid={grid!r}, block_size={block_size!r}"
        )
    check.check_positive_int("num_blocks", num_blocks)
    if block_size is not None:
        return None, check.check_block_size(block_size)
    rows, cols = check.check_int_pair("grid", PAPER_GRID if grid is None else grid, "(rows, cols)")
    if not rectangle and num_blocks > rows * cols:
        raise ValueError(
            f"num_blocks must be in [1, {rows * cols}] for a {rows}x{cols} grid, got {num_blocks}"
        )
    return (rows, cols), None


def block_size_for(grid: Pair | None, block_size: Pair | None, height: int, width: int) -> Pair:
    """The block size used on a ``height x width`` map: the pinned one, else the grid's."""
    if block_size is not None:
        return block_size
    if grid is None:
        raise ValueError("a layer's geometry needs a grid or a block_size")
    return grid_block_size(height, width, grid)


def num_blocks_for(
    grid: Pair | None, block_size: Pair | None, num_blocks: int, height: int, width: int
) -> int:
    """Blocks mixed per sample on a ``height x width`` map.

    ``num_blocks`` with a pinned ``block_size``; with a grid, the same share of the map's blocks
    as ``num_blocks`` is of ``rows * cols``, rounded half up, at least 1.
    """
    if grid is None:
        return num_blocks
    rows, cols = grid
    map_rows, map_cols = block_grid(height, width, block_size_for(grid, None, height, width))
    blocks = map_rows * map_cols
    # round(num_blocks * blocks / (rows * cols)) in integers, half up.
    share = (2 * num_blocks * blocks + rows * cols) // (2 * rows * cols)
    return min(max(share, 1), blocks)


def far_off(grid: Pair, num_blocks: int, height: int, width: int, mixed: int) -> str | None:
    """Why mixing ``mixed`` blocks of a ``height x width`` map is far (beyond :data:`FAR_OFF`
    times) from the share the grid aims at, or None when it is not."""
    rows, cols = grid
    map_rows, map_cols = block_grid(height, width, block_size_for(grid, None, height, width))
    fraction, target = mixed / (map_rows * map_cols), num_blocks / (rows * cols)
    if target / FAR_OFF <= fraction <= target * FAR_OFF:
        return None
    return (
        f"FeatureMix(grid={grid}, num_blocks={num_blocks}) mixes {mixed} of the "
        f"{map_rows * map_cols} blocks of a {height}x{width} map ({fraction:.1%}), far from the "
        f"target {target:.1%}: mix a larger map or choose the grid for this one"
    )
