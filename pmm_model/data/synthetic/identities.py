"""The identities of the synthetic set: palettes, body regions, and the combinatorics that share
every clue between identities yet keep every two of them apart in two regions or more."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from pmm_model.data.synthetic.streams import STREAM_IDENTITIES

__all__ = ["REGIONS", "RGB", "IdentityAttributes", "make_identities"]

RGB = tuple[int, int, int]

HAIR_COLORS: dict[str, RGB] = {
    "black": (28, 22, 20),
    "brown": (105, 62, 30),
    "blonde": (222, 190, 110),
    "grey": (165, 165, 168),
    "auburn": (160, 55, 25),
}
HAIR_STYLES = ("short", "long", "bun")
SKIN_TONES: dict[str, RGB] = {
    "light": (238, 202, 172),
    "medium": (196, 146, 106),
    "dark": (118, 80, 56),
}
UPPER_COLORS: dict[str, RGB] = {
    "red": (200, 38, 38),
    "blue": (40, 72, 195),
    "green": (38, 148, 62),
    "yellow": (228, 202, 40),
    "white": (236, 236, 236),
    "black": (32, 32, 34),
    "purple": (128, 48, 160),
    "orange": (238, 128, 28),
}
LOGO_SHAPES = ("circle", "square", "triangle", "bar")
LOGO_COLORS: dict[str, RGB] = {
    "white": (250, 250, 250),
    "cyan": (20, 215, 235),
    "magenta": (235, 25, 170),
    "lime": (165, 245, 35),
}
LOWER_COLORS: dict[str, RGB] = {
    "jeans": (44, 60, 115),
    "black": (26, 26, 28),
    "grey": (128, 128, 132),
    "khaki": (192, 170, 118),
    "brown": (112, 70, 40),
    "olive": (88, 98, 42),
}
LOWER_STYLES = ("trousers", "shorts")
# No black shoes: most trousers are dark and the clue would vanish against them.
SHOE_COLORS: dict[str, RGB] = {
    "white": (245, 245, 245),
    "red": (215, 30, 30),
    "blue": (30, 95, 230),
    "yellow": (240, 210, 25),
    "green": (70, 200, 80),
}
# Hand or shoulder, not left or right: training flips images horizontally, which would make a
# left bag and a right bag the same picture. The side is drawn per image instead.
BAG_STYLES = ("none", "hand", "shoulder")
BAG_COLORS: dict[str, RGB] = {
    "tan": (170, 120, 60),
    "black": (22, 22, 22),
    "maroon": (120, 20, 40),
    "teal": (20, 120, 120),
}

REGIONS: dict[str, tuple[str, ...]] = {
    "head": ("hair_color", "hair_style"),
    "skin": ("skin",),
    "torso": ("upper_color", "logo_shape", "logo_color"),
    "legs": ("lower_color", "lower_style"),
    "feet": ("shoe_color",),
    "bag": ("bag_style", "bag_color"),
}
"""The body regions and the :class:`IdentityAttributes` fields each one shows."""


def region_values() -> dict[str, list[tuple[str | None, ...]]]:
    """Every admissible value of every region, in a fixed order."""
    return {
        "head": list(itertools.product(HAIR_COLORS, HAIR_STYLES)),
        # Its own region, not part of the head: skin also shows on the hands and bare shins.
        "skin": [(skin,) for skin in SKIN_TONES],
        # A logo in nearly the shirt's colour would be an invisible clue.
        "torso": [
            (upper, shape, logo)
            for upper, shape, logo in itertools.product(UPPER_COLORS, LOGO_SHAPES, LOGO_COLORS)
            if math.dist(UPPER_COLORS[upper], LOGO_COLORS[logo]) > 120
        ],
        "legs": list(itertools.product(LOWER_COLORS, LOWER_STYLES)),
        "feet": [(shoe,) for shoe in SHOE_COLORS],
        # Without a bag there is no bag colour: "none" is one value, not four.
        "bag": [("none", None)]
        + [(style, color) for style in BAG_STYLES[1:] for color in BAG_COLORS],
    }


@dataclass(frozen=True)
class IdentityAttributes:
    """The visible clues of one synthetic identity; values are keys of the palettes above.

    Example:
        >>> a = make_identities(8)[0]
        >>> a.region("feet") == (a.shoe_color,)
        True
    """

    hair_color: str
    hair_style: str
    skin: str
    upper_color: str
    logo_shape: str
    logo_color: str
    lower_color: str
    lower_style: str
    shoe_color: str
    bag_style: str
    bag_color: str | None

    @classmethod
    def from_regions(cls, regions: dict[str, tuple[str | None, ...]]) -> IdentityAttributes:
        """Builds the attributes from one value per region, as :meth:`region` returns them."""
        values: dict[str, Any] = {
            field: value
            for name, fields in REGIONS.items()
            for field, value in zip(fields, regions[name], strict=True)
        }
        return cls(**values)

    def region(self, name: str) -> tuple[str | None, ...]:
        """The values of the attributes shown by region ``name`` (a key of :data:`REGIONS`)."""
        return tuple(getattr(self, field) for field in REGIONS[name])


def make_identities(num_ids: int, seed: int = 0) -> list[IdentityAttributes]:
    """Draws ``num_ids`` identities whose clues are shared but whose combinations are unique.

    Identities come in look-alike pairs, ``2j`` and ``2j + 1``, that wear the same values in all
    regions but two (chosen at random per pair, so sometimes only shoes and bag tell them apart).
    Guarantees: every two identities differ in at least two regions; every identity but the
    last of an odd count has a look-alike differing in exactly two; and for ``num_ids >= 8``
    every region value, and so every attribute value, is worn by at least two identities.

    Args:
        num_ids: Number of identities.
        seed: Seed of the draw.

    Returns:
        The identities; the same arguments always give the same list.

    Raises:
        ValueError: If ``num_ids`` is negative.
        RuntimeError: If the identities could not be separated by two regions, which only happens
            for far more identities than the palettes allow.

    Example:
        >>> ids = make_identities(12, seed=0)
        >>> len(set(ids))
        12
        >>> sum(ids[0].region(r) != ids[1].region(r) for r in REGIONS)
        2
    """
    if num_ids < 0:
        raise ValueError(f"num_ids must be >= 0, got {num_ids}")
    if num_ids == 0:
        return []
    rng = np.random.default_rng([seed, STREAM_IDENTITIES])
    num_bases = (num_ids + 1) // 2
    chosen: dict[str, list[tuple[str | None, ...]]] = {}
    bases = np.empty((num_bases, len(REGIONS)), dtype=np.int64)
    for r, (region, candidates) in enumerate(region_values().items()):
        # At most num_bases // 2 values, so each is worn by two base identities (and so by two
        # identities even where a look-alike changes it); at least two, so ids can differ here.
        k = min(len(candidates), max(2, num_bases // 2))
        chosen[region] = _pick_covering(candidates, k, rng)
        # Cycle through the k values and shuffle: each is used floor or ceil of num_bases / k times.
        bases[:, r] = rng.permutation(np.resize(np.arange(k), num_bases))
    _separate(bases, rng)
    sizes = np.array([len(values) for values in chosen.values()])
    codes = _add_lookalikes(bases, num_ids - num_bases, sizes, rng)
    return [
        IdentityAttributes.from_regions(
            {region: chosen[region][codes[i, r]] for r, region in enumerate(REGIONS)}
        )
        for i in range(num_ids)
    ]


def _add_lookalikes(
    bases: np.ndarray, count: int, sizes: np.ndarray, rng: np.random.Generator, tries: int = 1000
) -> np.ndarray:
    """Interleaves ``bases`` with look-alikes of the first ``count``: each copies its base and
    changes two random regions, redrawn until it differs from every other code in two or more.

    Near pairs are what make the set hard: a network that only looks at the most salient region
    (usually the torso) cannot separate the pairs that share it.
    """
    codes: list[np.ndarray | None] = [row for base in bases[:count] for row in (base, None)]
    codes += list(bases[count:])
    for j in range(count):
        base = bases[j]  # codes[2 * j]
        others = np.stack([c for c in codes if c is not None])
        for _ in range(tries):
            twin = base.copy()
            changed = rng.choice(len(sizes), size=2, replace=False)
            twin[changed] = (twin[changed] + rng.integers(1, sizes[changed])) % sizes[changed]
            if (others != twin).sum(axis=1).min() >= 2:
                break
        else:
            raise RuntimeError(f"found no look-alike for identity {2 * j}; use fewer identities")
        codes[2 * j + 1] = twin
    return np.stack(cast(list[np.ndarray], codes))  # every look-alike slot is filled now


def _pick_covering(
    candidates: list[tuple[str | None, ...]], k: int, rng: np.random.Generator
) -> list[tuple[str | None, ...]]:
    """Picks ``k`` region values, greedily favouring attribute values used least so far.

    Without this a random pick of, say, 8 torso values could leave out a logo colour entirely;
    the greedy rule spreads every attribute's values as evenly as ``k`` allows.
    """
    remaining = [candidates[i] for i in rng.permutation(len(candidates))]
    usage: list[Counter[str | None]] = [Counter() for _ in candidates[0]]
    picked = []
    for _ in range(k):
        # min() keeps the first of equal scores, and the order was shuffled: ties break randomly.
        best = min(
            range(len(remaining)),
            key=lambda i: sum(usage[a][v] for a, v in enumerate(remaining[i])),
        )
        value = remaining.pop(best)
        for a, v in enumerate(value):
            usage[a][v] += 1
        picked.append(value)
    return picked


def _separate(codes: np.ndarray, rng: np.random.Generator, max_swaps: int = 20_000) -> None:
    """Swaps region values between identities until every pair differs in two or more regions.

    Swaps keep how often each value is used, so the sharing guarantee of the balanced assignment
    survives. Conflicts are rare to begin with (the value space is much larger than the number of
    identities), so this usually ends after a handful of swaps.
    """
    n, num_regions = codes.shape

    def conflicts() -> np.ndarray:
        differing = (codes[:, None, :] != codes[None, :, :]).sum(-1)
        return np.argwhere(np.triu(differing < 2, k=1))

    bad = conflicts()
    for _ in range(max_swaps):
        if len(bad) == 0:
            return
        i = bad[rng.integers(len(bad))][rng.integers(2)]
        j = int(rng.integers(n))
        r = int(rng.integers(num_regions))
        codes[[i, j], r] = codes[[j, i], r]
        new_bad = conflicts()
        if len(new_bad) <= len(bad):
            bad = new_bad
        else:
            codes[[i, j], r] = codes[[j, i], r]
    if len(bad):
        raise RuntimeError(f"could not separate {n} identities by two regions; use fewer ids")
