"""The feature-mix family's mode table and the record of what a mix did.

:data:`MODES` maps each mode name to a :class:`MixMode` (how it chooses and fills its cells,
docs/op.md#feature-mix-family); :class:`MixInfo` is what :func:`pmm_kernels.feature_mix` returns
beside the mixed map.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class MixMode(NamedTuple):
    """How a mode chooses its cells and fills them (docs/op.md#feature-mix-family).

    Attributes:
        cells: ``"salient"`` (the k most salient blocks), ``"random"`` (k random blocks) or
            ``"rectangle"`` (one rectangle shared by the batch).
        partner_rule: ``"different_label"``, ``"any_other"``, or ``"none"`` (cells are zeroed).
        mixes_labels: whether the loss should see :func:`mixed_targets` instead of the labels.
    """

    cells: str
    partner_rule: str
    mixes_labels: bool


MODES: dict[str, MixMode] = {
    "a_hard_mix": MixMode("salient", "different_label", False),
    "hard_mix": MixMode("random", "different_label", False),
    "a_cutmix": MixMode("salient", "any_other", True),
    "cutmix": MixMode("random", "any_other", True),
    "cutout": MixMode("random", "none", False),
    "batch_drop": MixMode("rectangle", "none", False),
}


class MixInfo(NamedTuple):
    """What a mix did to each sample.

    Attributes:
        partners: (N,) int64 partner of each sample (the sample whose cells it took; for the
            cutmix modes it may share the label), -1 where no cell came from a partner (always
            for ``cutout`` and ``batch_drop``).
        blocks: (N, num_blocks) int64 selected block indices (row-major), highest score (or key)
            first; (N, 1) of -1 for ``batch_drop``.
        mask: (N, H, W) bool, True where the cell was replaced or zeroed.
        lam: (N,) float32 replaced or zeroed area / (H * W).
        label_lam: (N,) float32 share of the partner's label in the sample's loss target
            (:func:`pmm_kernels.mixed_targets`): ``lam`` where the mode mixes labels
            (``MODES[mode].mixes_labels``: ``a_cutmix``, ``cutmix``) and the sample has a
            partner, else 0. None only in a MixInfo built by hand without it, for which
            :func:`~pmm_kernels.mixed_targets` mixes by ``lam`` wherever there is a partner.
            A tensor rather than the mode's name, so that a MixInfo stays a tuple of tensors
            (``MixInfo(*(t.cpu() for t in info))`` keeps working).
    """

    partners: torch.Tensor
    blocks: torch.Tensor
    mask: torch.Tensor
    lam: torch.Tensor
    label_lam: torch.Tensor | None = None


# Words for the README's mode table (tests/test_docs.py keeps it equal to mode_table()).
_CELLS_WORDS = {
    "salient": "the k most salient blocks",
    "random": "k random blocks",
    "rectangle": "one rectangle for the whole batch",
}
_PARTNER_WORDS = {
    "different_label": "a sample of a different label",
    "any_other": "any other sample",
    "none": "none",
}


def mode_table() -> str:
    """The family as a markdown table, one row per entry of :data:`MODES`.

    Example:
        >>> print(mode_table().splitlines()[6])
        | `cutout` | k random blocks | zeros | none | unchanged |
    """
    rows = [
        "| `mode=` | cells | filled from | partner | loss labels |",
        "|---|---|---|---|---|",
    ]
    for name, mode in MODES.items():
        filled = "zeros" if mode.partner_rule == "none" else "the partner"
        labels = "mixed by area" if mode.mixes_labels else "unchanged"
        rows.append(
            f"| `{name}` | {_CELLS_WORDS[mode.cells]} | {filled} | "
            f"{_PARTNER_WORDS[mode.partner_rule]} | {labels} |"
        )
    return "\n".join(rows)
