"""The op's cases, one table for the static GPU check, the Triton tests and the benchmarks.

A :class:`Call` is one way :func:`pmm_kernels.feature_mix` calls the launchers: a mode of
:data:`pmm_kernels.MODES`, the attn form of the salient modes, drawn or given partners.
:data:`CALLS` lists every call the op can make; the static check compiles each of them and the
Triton tests run each of them against the PyTorch launcher. A :class:`Shape` is a feature map with
its block size and k; the tables below say which maps each consumer runs, and
:func:`launcher_plan` builds the launchers' plan of a call on a map.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace

import torch

from pmm_kernels.functional import feature_mix
from pmm_kernels.modes import MODES
from pmm_kernels.ops.plan import CellSource, MixPlan
from pmm_kernels.ops.utils import batch_drop_size, block_grid

ATTN_FORMS: tuple[str, ...] = ("weights", "map")
# Memory layouts of a map that the op takes without a copy: NCHW, channels_last (also a
# transformer stage's (N, H, W, C) output seen as NCHW), and "tokens": the patch tokens of an
# (N, P + H*W, C) token tensor seen as (N, C, H, W) (docs/transformers.md), channels_last strides
# with a batch stride of (P + H*W) * C and an offset of P * C. The static check and the Triton
# tests run each.
MAP_LAYOUTS: tuple[str, ...] = ("contiguous", "channels_last", "tokens")
TOKEN_PREFIX = 1  # a cls token in front of the patch tokens


def in_layout(feat: torch.Tensor, layout: str) -> torch.Tensor:
    """``feat`` (N, C, H, W) with the same values in ``layout`` (one of :data:`MAP_LAYOUTS`).

    Example:
        >>> view = in_layout(torch.zeros(2, 3, 4, 5), "tokens")
        >>> view.shape, view.stride(), view.storage_offset()
        (torch.Size([2, 3, 4, 5]), (63, 1, 15, 3), 3)
    """
    if layout == "contiguous":
        return feat.contiguous()
    if layout == "channels_last":
        return feat.contiguous(memory_format=torch.channels_last)
    if layout == "tokens":
        n, c, h, w = feat.shape
        tokens = torch.zeros(n, TOKEN_PREFIX + h * w, c, dtype=feat.dtype, device=feat.device)
        patches = tokens[:, TOKEN_PREFIX:].view(n, h, w, c).permute(0, 3, 1, 2)
        patches.copy_(feat)
        return patches
    raise ValueError(f"layout must be one of {MAP_LAYOUTS}, got {layout!r}")


DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)
# batch_drop's rectangle at the op's default ratios: the rectangle the layers launch.
_DEFAULTS = inspect.signature(feature_mix).parameters
BATCH_DROP_RATIOS: tuple[float, float] = (
    _DEFAULTS["h_ratio"].default,
    _DEFAULTS["w_ratio"].default,
)
_ATTN_NAMES = {"weights": "channel weights", "map": "saliency map"}


@dataclass(frozen=True)
class Call:
    """One way the op calls the launchers.

    Attributes:
        mode: a key of :data:`pmm_kernels.MODES`.
        attn_form: ``"weights"`` ((N, C) channel weights) or ``"map"`` ((N, H, W) saliency) for
            the salient modes, None for the others.
        given: whether the partners are given instead of drawn.
    """

    mode: str
    attn_form: str | None = None
    given: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {tuple(MODES)}, got {self.mode!r}")
        salient = MODES[self.mode].cells == "salient"
        if salient != (self.attn_form in ATTN_FORMS):
            raise ValueError(
                f"attn_form must be one of {ATTN_FORMS} for the salient modes and None for the "
                f"others, got {self.attn_form!r} for mode={self.mode!r}"
            )
        if self.given and self.partner_rule == "none":
            raise ValueError(f"mode={self.mode!r} has no partners to give")

    @property
    def name(self) -> str:
        """How reports and test ids name the call, e.g. "a_hard_mix, saliency map"."""
        parts = [self.mode]
        if self.attn_form is not None:
            parts.append(_ATTN_NAMES[self.attn_form])
        if self.given:
            parts.append("given partners")
        return ", ".join(parts)

    @property
    def partner_rule(self) -> str:
        return MODES[self.mode].partner_rule

    @property
    def source(self) -> str:
        """Where the cells come from, as the launchers take it: "weights" or "map" (attn),
        "keys" (random blocks) or "corner" (a rectangle)."""
        cells = MODES[self.mode].cells
        if cells == "salient":
            return str(self.attn_form)
        return "keys" if cells == "random" else "corner"

    def cut(self, shape: Shape) -> Shape:
        """``shape`` with the block size and k the op launches this call with: batch_drop's one
        rectangle, the shape's own blocks for the other modes."""
        if self.source != "corner":
            return shape
        size = batch_drop_size(shape.h, shape.w, *BATCH_DROP_RATIOS)
        return replace(shape, block_size=size, num_blocks=1)


# Every call the op makes: each mode, both attn forms of the salient ones, given partners for
# one salient and one random mode (the planning kernel then reads them instead of drawing).
CALLS: tuple[Call, ...] = (
    Call("a_hard_mix", "weights"),
    Call("a_hard_mix", "map"),
    Call("a_hard_mix", "map", given=True),
    Call("a_cutmix", "weights"),
    Call("a_cutmix", "map"),
    Call("hard_mix"),
    Call("cutmix"),
    Call("cutmix", given=True),
    Call("cutout"),
    Call("batch_drop"),
)


@dataclass(frozen=True)
class Shape:
    """A feature map (N, C, H, W) with the block size and k the op cuts it with.

    Attributes:
        name: how reports and test ids name the shape.
    """

    name: str
    n: int
    c: int
    h: int
    w: int
    block_size: tuple[int, int] = (3, 2)
    num_blocks: int = 3

    @property
    def num_grid_blocks(self) -> int:
        rows, cols = block_grid(self.h, self.w, self.block_size)
        return rows * cols

    @property
    def replaced_fraction(self) -> float:
        """f: the most of the map that k blocks replace (edge blocks counted whole)."""
        area = self.num_blocks * self.block_size[0] * self.block_size[1]
        return min(area, self.h * self.w) / (self.h * self.w)


# The paper's layer-3 map (ResNet-50 at 384x128): C=2048, 24x8, k=3 blocks of 3x2 (8x4 grid).
PAPER = Shape("paper", n=64, c=2048, h=24, w=8)

# What the static check compiles. The compiled code depends only on dtypes, constexprs, which
# strides equal 1 and which integers are multiples of 16, so C=64 stands for C=2048; 7x5 and
# C=130 are the layouts whose rows can't be proven 16-byte aligned.
COMPILED: tuple[Shape, ...] = (
    Shape("24x8", n=8, c=64, h=24, w=8),
    Shape("7x5", n=8, c=64, h=7, w=5),
    Shape("7x5, C=130", n=8, c=130, h=7, w=5),
)
# A batch whose labels the planning kernel reads in several chunks (of 256), and a call that
# reads them.
CHUNKED_LABELS = Shape("24x8", n=1100, c=64, h=24, w=8)
CHUNKED_CALL = Call("a_hard_mix", "map")

# The Triton tests' grid of the public op, thinned to stay quick under the interpreter: every N,
# C, map size and block size appears (block = the whole map in the third of each trio); each
# shape runs k = 1, the middle and all blocks.
SWEEP: tuple[Shape, ...] = (
    Shape("N1-C3-24x8-b3x2", n=1, c=3, h=24, w=8, block_size=(3, 2)),
    Shape("N2-C130-24x8-b1x1", n=2, c=130, h=24, w=8, block_size=(1, 1)),
    Shape("N16-C1-24x8-whole", n=16, c=1, h=24, w=8, block_size=(24, 8)),
    Shape("N7-C3-7x5-b3x2", n=7, c=3, h=7, w=5, block_size=(3, 2)),
    Shape("N16-C130-7x5-b1x1", n=16, c=130, h=7, w=5, block_size=(1, 1)),
    Shape("N1-C1-7x5-whole", n=1, c=1, h=7, w=5, block_size=(7, 5)),
    Shape("N2-C3-1x1-b3x2", n=2, c=3, h=1, w=1, block_size=(3, 2)),
    Shape("N7-C1-1x1-b1x1", n=7, c=1, h=1, w=1, block_size=(1, 1)),
    Shape("N16-C3-1x1-whole", n=16, c=3, h=1, w=1, block_size=(1, 1)),
    Shape("N7-C130-24x8-b3x2", n=7, c=130, h=24, w=8, block_size=(3, 2)),
)

# The launchers' tests: every call of CALLS on each of these maps.
LAUNCHED: tuple[Shape, ...] = (
    Shape("odd-map-clipped-edges", n=5, c=7, h=7, w=5, block_size=(3, 2), num_blocks=2),
    Shape("k1", n=4, c=5, h=5, w=3, block_size=(2, 2), num_blocks=1),
    Shape("N1-no-partner-every-block", n=1, c=3, h=6, w=4, block_size=(2, 2), num_blocks=6),
    Shape("paper-map", n=9, c=16, h=24, w=8, block_size=(3, 2), num_blocks=3),
)


def launcher_plan(
    source: str,
    partner_rule: str,
    given: bool,
    feat: torch.Tensor,
    block_size: tuple[int, int],
    num_blocks: int,
    generator: torch.Generator,
) -> MixPlan:
    """The launchers' plan, drawn from ``generator`` on CPU and moved to ``feat``'s device.

    For ``feature_mix_forward_triton(feat, plan)`` and ``feature_mix_forward_torch(feat, plan)``:
    the cells from ``source`` (see :attr:`Call.source`), labels in [0, 3), partners in [-1, N)
    when ``given``, else a partner draw ``u`` unless the rule is "none". Draw order: cells,
    partners, labels, u.
    """
    n, c, h, w = feat.shape
    rows, cols = block_grid(h, w, block_size)
    if source == "weights":
        cells = torch.randn(n, c, generator=generator)
    elif source == "map":
        cells = torch.randn(n, h, w, generator=generator)
    elif source == "keys":
        cells = torch.rand(n, rows * cols, generator=generator)
    elif source == "corner":
        cells = torch.tensor([h // 3, w // 4])
    else:
        raise ValueError(f"source must be weights, map, keys or corner, got {source!r}")
    given_partners = torch.randint(-1, n, (n,), generator=generator) if given else None
    labels = torch.randint(0, 3, (n,), generator=generator)
    draw = torch.rand(n, generator=generator)
    u = None if given or partner_rule == "none" else draw
    plan = MixPlan(
        CellSource(source, cells), labels, u, given_partners, block_size, num_blocks, partner_rule
    )
    return plan.to(feat.device)
