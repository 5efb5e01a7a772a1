"""What one feature mix is asked to do: a :class:`MixPlan` with its :class:`CellSource`.

Both launchers (``reference.feature_mix_forward_torch`` and
``feature_mix_triton.feature_mix_forward_triton``) take ``(feat, plan)``; the custom op, whose
schema admits only tensors and scalars, carries the same plan flattened by
:meth:`MixPlan.op_args` and rebuilt by :meth:`MixPlan.from_op_args`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from pmm_kernels.ops.utils import PARTNER_RULES

# Where the cells come from: (N, C) channel weights, an (N, H, W) saliency map (both: the k most
# salient blocks), (N, rows * cols) random keys (the k largest) or batch_drop's (2,) rectangle
# corner (top, left).
CELL_KINDS = ("weights", "map", "keys", "corner")


@dataclass(frozen=True)
class CellSource:
    """The tensor that chooses a mix's cells, and what kind of tensor it is.

    Attributes:
        kind: one of :data:`CELL_KINDS`.
        values: ``"weights"``: (N, C) channel weights, saliency ``ReLU(sum_c w * feat)``;
            ``"map"``: an (N, H, W) saliency map; ``"keys"``: (N, rows * cols) float32 random
            keys; ``"corner"``: (2,) int64 top-left cell of a ``block_size`` rectangle.
    """

    kind: str
    values: torch.Tensor

    def __post_init__(self) -> None:
        if self.kind not in CELL_KINDS:
            raise ValueError(f"cells kind must be one of {CELL_KINDS}, got {self.kind!r}")

    @classmethod
    def saliency(cls, attn: torch.Tensor) -> CellSource:
        """``attn`` of the attentive modes: (N, C) weights or an (N, H, W) map."""
        return cls("weights" if attn.dim() == 2 else "map", attn)


@dataclass(frozen=True)
class MixPlan:
    """One mix's inputs besides ``feat``, already validated (docs/op.md#feature-mix-family).

    Attributes:
        cells: what chooses the cells.
        labels: (N,) integer labels (read by ``partner_rule="different_label"``).
        u: (N,) float32 partner draws; None with ``given_partners`` or rule ``"none"``.
        given_partners: (N,) int64 partners in [-1, N) chosen by the caller, used as is.
        block_size: (bh, bw) block, or the rectangle's (rh, rw) with a ``"corner"``.
        num_blocks: blocks per sample (1 with a ``"corner"``).
        partner_rule: ``"different_label"``, ``"any_other"`` or ``"none"`` (cells are zeroed).

    Raises:
        ValueError: an unknown rule, a rectangle that is not zeroed, or a partner rule without
            draws ``u`` nor given partners.
    """

    cells: CellSource
    labels: torch.Tensor
    u: torch.Tensor | None
    given_partners: torch.Tensor | None
    block_size: tuple[int, int]
    num_blocks: int
    partner_rule: str

    def __post_init__(self) -> None:
        if self.partner_rule not in PARTNER_RULES:
            raise ValueError(
                f"partner_rule must be one of {PARTNER_RULES}, got {self.partner_rule!r}"
            )
        if self.cells.kind == "corner" and self.partner_rule != "none":
            raise ValueError("a rectangle (corner) only zeroes cells: partner_rule must be 'none'")
        if self.from_partner and self.u is None and self.given_partners is None:
            raise ValueError(f"partner_rule={self.partner_rule!r} without given partners needs u")

    @property
    def from_partner(self) -> bool:
        """Whether cells are taken from a partner (else they are zeroed)."""
        return self.partner_rule != "none"

    def to(self, device: torch.device | str) -> MixPlan:
        """The same plan with every tensor on ``device``."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return replace(
            self,
            cells=CellSource(self.cells.kind, self.cells.values.to(device)),
            labels=self.labels.to(device),
            u=move(self.u),
            given_partners=move(self.given_partners),
        )

    def op_args(self) -> tuple:
        """The plan flattened for the custom op's schema (see :meth:`from_op_args`)."""
        return (
            self.cells.values,
            self.cells.kind,
            self.labels,
            self.u,
            self.given_partners,
            *self.block_size,
            self.num_blocks,
            self.partner_rule,
        )

    @classmethod
    def from_op_args(
        cls,
        cells: torch.Tensor,
        cell_kind: str,
        labels: torch.Tensor,
        u: torch.Tensor | None,
        given_partners: torch.Tensor | None,
        block_h: int,
        block_w: int,
        num_blocks: int,
        partner_rule: str,
    ) -> MixPlan:
        """The plan :meth:`op_args` flattened."""
        return cls(
            CellSource(cell_kind, cells),
            labels,
            u,
            given_partners,
            (block_h, block_w),
            num_blocks,
            partner_rule,
        )
