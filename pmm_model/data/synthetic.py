"""A small synthetic person re-identification set whose identities differ in several local clues.

Real ReID data sets are large downloads; this module draws a deterministic stand-in with numpy and
``PIL.ImageDraw`` and writes it in the Market-1501 layout, so the whole pipeline (data set parsing,
PK sampling, training, CMC/mAP evaluation) runs anywhere in seconds.

What makes it useful for PMM: every identity is a combination of six *regions*, each carrying
one or a few attributes drawn from small palettes:

=======  ==========================================  ============================================
region   attributes                                  where it appears
=======  ==========================================  ============================================
head     hair colour, hair style                     top ~20 % of the person
skin     skin tone                                   face, hands, shins below shorts
torso    upper-body colour, logo shape, logo colour  shoulders to waist, sleeves
legs     lower-body colour, trousers or shorts       waist to ankles
feet     shoe colour                                 bottom ~6 %
bag      none / hand bag / shoulder bag, bag colour  at the hand or on the hip, strap on the torso
=======  ==========================================  ============================================

:func:`make_identities` chooses the combinations so that (1) every region value, and so every
single attribute value, is worn by at least two identities: no single region identifies anyone;
(2) any two identities differ in at least two regions: hiding one region (which is what PMM's
feature mix does to the most salient blocks) still leaves every pair distinguishable; (3)
identities come in look-alike pairs that differ in exactly two regions, often small ones, so
the most salient region alone does not separate them. A network trained on this set therefore
has to combine several small clues.

Cameras differ in illumination (gain and colour cast), background (colour, floor, texture,
clutter), blur, noise level and where the person stands in the box (shift, scale). Each image adds
its own pose (arm swing, stride, which side the bag hangs on), placement jitter and sensor noise.

Example:
    >>> from pmm_model.data.synthetic import ensure_synthetic
    >>> root = ensure_synthetic("/tmp/pmm-data")  # doctest: +SKIP
    >>> sorted(p.name for p in root.iterdir())  # doctest: +SKIP
    ['bounding_box_test', 'bounding_box_train', 'params.json', 'query']
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "REGIONS",
    "CameraParams",
    "IdentityAttributes",
    "default_root",
    "ensure_synthetic",
    "make_cameras",
    "make_identities",
    "render_person",
]

RGB = tuple[int, int, int]

# Bump whenever the output changes (drawing, identities, layout): the version is part of the cache
# folder's name, so stale sets are never mistaken for current ones.
_VERSION = 1
# Shapes are drawn at this multiple of the output size and reduced with a Lanczos filter, which
# anti-aliases the edges that ImageDraw leaves jagged.
_SUPERSAMPLE = 2
# JPEG like Market-1501 itself (loaders glob ``*.jpg``); high quality and no chroma subsampling so
# that a logo a few pixels wide keeps its colour.
_JPEG_QUALITY = 95

# Independent random streams: the identities, the cameras, every person image and every
# distractor each get their own SeedSequence, so no output depends on the order of generation.
_STREAM_IDENTITIES = 1
_STREAM_CAMERAS = 2
_STREAM_IMAGE = 3
_STREAM_DISTRACTOR = 4

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


def _region_values() -> dict[str, list[tuple[str | None, ...]]]:
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
        return cls(
            **{
                field: value
                for name, fields in REGIONS.items()
                for field, value in zip(fields, regions[name], strict=True)
            }
        )

    def region(self, name: str) -> tuple[str | None, ...]:
        """The values of the attributes shown by region ``name`` (a key of :data:`REGIONS`)."""
        return tuple(getattr(self, field) for field in REGIONS[name])


@dataclass(frozen=True)
class CameraParams:
    """What one camera does to every image it takes.

    Attributes:
        gain: Overall brightness multiplier.
        cast: Per-channel (R, G, B) multiplier, the camera's colour cast.
        wall: Background colour above the horizon.
        floor: Background colour below the horizon.
        horizon: Height of the horizon as a fraction of the image height from the top.
        texture: Background pattern: ``"stripes"``, ``"tiles"``, ``"gradient"`` or ``"plain"``.
        person_height: Mean height of the person as a fraction of the image height.
        x_offset: Mean horizontal shift of the person as a fraction of the image width.
        blur: Gaussian blur radius in output pixels (0 for none).
        noise: Standard deviation of the additive sensor noise, in 8-bit levels.
    """

    gain: float
    cast: tuple[float, float, float]
    wall: RGB
    floor: RGB
    horizon: float
    texture: str
    person_height: float
    x_offset: float
    blur: float
    noise: float


_TEXTURES = ("stripes", "tiles", "gradient", "plain")


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
    rng = np.random.default_rng([seed, _STREAM_IDENTITIES])
    num_bases = (num_ids + 1) // 2
    chosen: dict[str, list[tuple[str | None, ...]]] = {}
    bases = np.empty((num_bases, len(REGIONS)), dtype=np.int64)
    for r, (region, candidates) in enumerate(_region_values().items()):
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
    codes = [row for base in bases[:count] for row in (base, None)]
    codes += list(bases[count:])
    for j in range(count):
        base = codes[2 * j]
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
    return np.stack(codes)


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


def make_cameras(num_cameras: int, seed: int = 0) -> list[CameraParams]:
    """Draws the settings of ``num_cameras`` cameras.

    Args:
        num_cameras: Number of cameras.
        seed: Seed of the draw.

    Returns:
        One :class:`CameraParams` per camera; consecutive cameras use different textures.

    Example:
        >>> len(make_cameras(4))
        4
    """
    rng = np.random.default_rng([seed, _STREAM_CAMERAS])
    textures = [_TEXTURES[i] for i in rng.permutation(len(_TEXTURES))]
    cameras = []
    for c in range(num_cameras):
        # Muted backgrounds, like the walls and pavements of real surveillance footage, so that
        # the person's saturated clothing stays the salient content.
        wall = _muted_color(rng, 70, 190)
        floor = _muted_color(rng, 50, 150)
        cameras.append(
            CameraParams(
                gain=float(rng.uniform(0.75, 1.15)),
                cast=tuple(float(v) for v in rng.uniform(0.88, 1.12, size=3)),
                wall=wall,
                floor=floor,
                horizon=float(rng.uniform(0.55, 0.75)),
                texture=textures[c % len(textures)],
                person_height=float(rng.uniform(0.80, 0.92)),
                x_offset=float(rng.uniform(-0.06, 0.06)),
                blur=float(rng.choice([0.0, 0.0, 0.4, 0.7])),
                noise=float(rng.uniform(2.0, 7.0)),
            )
        )
    return cameras


def _muted_color(rng: np.random.Generator, low: int, high: int) -> RGB:
    grey = rng.uniform(low, high)
    return tuple(int(v) for v in np.clip(grey + rng.uniform(-25, 25, size=3), 0, 255))


@dataclass(frozen=True)
class _Pose:
    """Per-image randomness, drawn in full before drawing so every image consumes the same
    number of random values whatever the identity: two identities rendered with equally seeded
    generators then differ exactly where their clues differ."""

    scale: float
    dx: float
    bottom_margin: float
    arm_swing: float
    stride: float
    bag_side: int
    gain: float


def _draw_pose(rng: np.random.Generator) -> _Pose:
    return _Pose(
        scale=float(rng.uniform(0.96, 1.04)),
        dx=float(rng.uniform(-0.04, 0.04)),
        bottom_margin=float(rng.uniform(0.01, 0.05)),
        arm_swing=float(rng.uniform(-0.15, 0.15)),
        stride=float(rng.uniform(0.0, 0.3)),
        bag_side=int(rng.choice([-1, 1])),
        gain=float(rng.uniform(0.93, 1.07)),
    )


def render_person(
    attributes: IdentityAttributes,
    camera: CameraParams,
    rng: np.random.Generator,
    height: int = 128,
    width: int = 64,
) -> Image.Image:
    """Draws one image of a person as seen by a camera.

    Args:
        attributes: The identity.
        camera: The camera.
        rng: Source of the per-image variation (pose, placement, background details, noise).
            Equally seeded generators give identical images.
        height: Image height in pixels.
        width: Image width in pixels.

    Returns:
        An RGB image of size ``(width, height)``.

    Example:
        >>> import numpy as np
        >>> person, camera = make_identities(4)[0], make_cameras(2)[0]
        >>> render_person(person, camera, np.random.default_rng(0)).size
        (64, 128)
    """
    return _render(attributes, camera, rng, height, width, partial=False)


def _render(
    attributes: IdentityAttributes,
    camera: CameraParams,
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    partial: bool,
) -> Image.Image:
    """Draws a person; ``partial`` pushes them half out of the box (a distractor detection)."""
    pose = _draw_pose(rng)
    big_h, big_w = height * _SUPERSAMPLE, width * _SUPERSAMPLE
    image = _background(camera, rng, big_h, big_w)
    person_h = camera.person_height * pose.scale * big_h
    cx = big_w * (0.5 + camera.x_offset + pose.dx)
    if partial:
        cx += big_w * float(rng.choice([-1, 1])) * float(rng.uniform(0.45, 0.6))
    top = big_h * (1.0 - pose.bottom_margin) - person_h
    _draw_person(ImageDraw.Draw(image), attributes, pose, cx, top, person_h)

    image = image.resize((width, height), Image.Resampling.LANCZOS)
    if camera.blur > 0:
        image = image.filter(ImageFilter.GaussianBlur(camera.blur))
    pixels = np.asarray(image, dtype=np.float32)
    pixels = pixels * (pose.gain * camera.gain * np.asarray(camera.cast, dtype=np.float32))
    pixels += rng.normal(0.0, camera.noise, size=pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def _background(camera: CameraParams, rng: np.random.Generator, h: int, w: int) -> Image.Image:
    """Wall and floor in the camera's colours and texture, plus a little per-image clutter."""
    pixels = np.empty((h, w, 3), dtype=np.float32)
    horizon = int(h * (camera.horizon + rng.uniform(-0.03, 0.03)))
    pixels[:horizon] = camera.wall
    pixels[horizon:] = camera.floor
    rows = np.arange(h, dtype=np.float32)[:, None]
    cols = np.arange(w, dtype=np.float32)[None, :]
    period = w / 4
    # A random phase shifts the pattern between frames, as the detector box moves.
    phase = rng.uniform(0, period)
    if camera.texture == "stripes":
        shade = np.where(((cols + phase) // (period / 2)) % 2 == 0, 1.0, 0.85)
        shade = np.broadcast_to(shade, (h, w))
    elif camera.texture == "tiles":
        shade = np.where(((rows + phase) // period + (cols + phase) // period) % 2 == 0, 1.0, 0.88)
    elif camera.texture == "gradient":
        shade = np.broadcast_to(0.75 + 0.4 * rows / h, (h, w))
    else:
        shade = np.ones((h, w), dtype=np.float32)
    pixels *= shade[..., None]
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))

    # Poles, doors and bins: vertical shapes that a network must learn to ignore.
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(0, 3))):
        x0 = rng.uniform(-0.1, 1.0) * w
        x1 = x0 + rng.uniform(0.05, 0.2) * w
        y0 = rng.uniform(0.0, 0.6) * h
        draw.rectangle((x0, y0, x1, h), fill=_muted_color(rng, 40, 200))
    return image


def _limb(
    draw: ImageDraw.ImageDraw,
    start: tuple[float, float],
    length: float,
    width: float,
    angle: float,
    fill: RGB,
) -> tuple[float, float]:
    """Draws a bar hanging from ``start`` at ``angle`` radians from vertical; returns its end."""
    dx, dy = math.sin(angle), math.cos(angle)
    px, py = dy * width / 2, -dx * width / 2
    x0, y0 = start
    x1, y1 = x0 + dx * length, y0 + dy * length
    draw.polygon(
        [(x0 - px, y0 - py), (x0 + px, y0 + py), (x1 + px, y1 + py), (x1 - px, y1 - py)], fill=fill
    )
    return x1, y1


def _draw_person(
    draw: ImageDraw.ImageDraw,
    a: IdentityAttributes,
    pose: _Pose,
    cx: float,
    top: float,
    u: float,
) -> None:
    """Draws the person, ``u`` pixels tall, top of the head at ``top``, centred on ``cx``.

    Coordinates below are in units of the person's height: the head is about 1/8 of it, like an
    adult's, and the width across the shoulders about a quarter.
    """

    def at(x: float, y: float) -> tuple[float, float]:
        return cx + x * u, top + y * u

    def box(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
        return (*at(x0, y0), *at(x1, y1))

    skin = SKIN_TONES[a.skin]
    hair = HAIR_COLORS[a.hair_color]
    upper = UPPER_COLORS[a.upper_color]
    lower = LOWER_COLORS[a.lower_color]

    if a.hair_style == "long":
        # Hair behind the head and neck, falling to the shoulders.
        draw.rounded_rectangle(box(-0.075, 0.04, 0.075, 0.22), radius=0.03 * u, fill=hair)

    # Legs swing in opposite directions with the stride; shorts leave the shin bare.
    leg_len, leg_w = 0.42 * u, 0.085 * u
    for side in (-1, 1):
        hip = at(0.052 * side, 0.52)
        angle = side * pose.stride * 0.5
        foot = _limb(draw, hip, leg_len, leg_w, angle, skin if a.lower_style == "shorts" else lower)
        if a.lower_style == "shorts":
            _limb(draw, hip, 0.42 * leg_len, leg_w * 1.1, angle, lower)
        fx, fy = foot
        draw.ellipse(
            (fx - 0.06 * u, fy - 0.03 * u, fx + 0.06 * u, fy + 0.035 * u),
            fill=SHOE_COLORS[a.shoe_color],
        )

    draw.polygon([at(-0.105, 0.48), at(0.105, 0.48), at(0.11, 0.58), at(-0.11, 0.58)], fill=lower)
    draw.polygon(
        [at(-0.125, 0.165), at(0.125, 0.165), at(0.105, 0.50), at(-0.105, 0.50)], fill=upper
    )
    _draw_logo(draw, a, at, u)

    shoulder_y = 0.18
    if a.bag_style == "shoulder":
        # Strap from the far shoulder across the chest to the bag on the near hip.
        draw.line(
            [at(-0.09 * pose.bag_side, shoulder_y - 0.01), at(0.12 * pose.bag_side, 0.44)],
            fill=BAG_COLORS[a.bag_color],
            width=max(1, round(0.018 * u)),
        )

    hands = {}
    for side in (-1, 1):
        hand = _limb(
            draw,
            at(0.135 * side, shoulder_y),
            0.32 * u,
            0.062 * u,
            side * 0.1 + pose.arm_swing,
            upper,
        )
        hands[side] = hand
        hx, hy = hand
        draw.ellipse((hx - 0.033 * u, hy - 0.02 * u, hx + 0.033 * u, hy + 0.045 * u), fill=skin)

    if a.bag_style == "hand":
        hx, hy = hands[pose.bag_side]
        draw.rectangle(
            (hx - 0.05 * u, hy + 0.02 * u, hx + 0.05 * u, hy + 0.13 * u),
            fill=BAG_COLORS[a.bag_color],
        )
    elif a.bag_style == "shoulder":
        s = pose.bag_side
        draw.rounded_rectangle(
            box(min(0.08 * s, 0.19 * s), 0.41, max(0.08 * s, 0.19 * s), 0.52),
            radius=0.015 * u,
            fill=BAG_COLORS[a.bag_color],
        )

    draw.rectangle(box(-0.025, 0.13, 0.025, 0.175), fill=skin)
    draw.ellipse(box(-0.058, 0.025, 0.058, 0.15), fill=skin)
    # Hair covers the crown: a cap over the top of the head, plus a bun on top for that style.
    draw.chord(box(-0.064, 0.018, 0.064, 0.13), start=180, end=360, fill=hair)
    if a.hair_style == "bun":
        draw.ellipse(box(-0.035, -0.02, 0.035, 0.04), fill=hair)


def _draw_logo(
    draw: ImageDraw.ImageDraw,
    a: IdentityAttributes,
    at: Callable[[float, float], tuple[float, float]],
    u: float,
) -> None:
    """Draws the chest logo; ``at`` maps person units to pixels as in :func:`_draw_person`."""
    color = LOGO_COLORS[a.logo_color]
    x, y, r = 0.0, 0.29, 0.045
    if a.logo_shape == "circle":
        draw.ellipse((*at(x - r, y - r), *at(x + r, y + r)), fill=color)
    elif a.logo_shape == "square":
        draw.rectangle((*at(x - r, y - r), *at(x + r, y + r)), fill=color)
    elif a.logo_shape == "triangle":
        draw.polygon(
            [at(x, y - r * 1.1), at(x + r * 1.2, y + r), at(x - r * 1.2, y + r)], fill=color
        )
    else:  # "bar": a chest stripe from side to side
        draw.rectangle((*at(-0.118, y - 0.025), *at(0.118, y + 0.025)), fill=color)


def default_root() -> Path:
    """The cache folder: ``$PMM_DATA_DIR/synthetic`` if that variable is set, else
    ``~/.cache/pmm/synthetic``."""
    base = os.environ.get("PMM_DATA_DIR")
    return Path(base) / "synthetic" if base else Path.home() / ".cache" / "pmm" / "synthetic"


def ensure_synthetic(
    root: str | Path | None = None,
    *,
    num_train_ids: int = 80,
    num_test_ids: int = 40,
    num_cameras: int = 4,
    images_per_id_per_camera: int = 3,
    height: int = 128,
    width: int = 64,
    num_distractors: int = 20,
    seed: int = 0,
) -> Path:
    """Returns the folder of the synthetic set with these parameters, generating it on first use.

    The folder, ``<root>/synthetic-v<version>-<hash of the parameters>``, has the Market-1501
    layout: ``bounding_box_train/``, ``bounding_box_test/`` (gallery) and ``query/``, with files
    named ``PPPP_cCs1_FFFFFF_01.jpg`` (identity, 1-based camera, frame) and a ``params.json``
    recording the parameters and every identity's attributes. Identities ``1..num_train_ids``
    train, the next ``num_test_ids`` test; look-alike pairs (see :func:`make_identities`) are
    ``(1, 2), (3, 4), ...``, so with an even ``num_train_ids`` each pair stays in one split.
    Each test identity puts its first image from ``num_cameras - 1`` cameras (a different subset
    per identity) into ``query/`` and all its other images into the gallery, so every query has
    gallery matches from the camera it was not queried from. The gallery also holds
    ``num_distractors`` images with identity ``0000``: people pushed half out of the box, like a
    detector's bad crops.

    The set is written into a temporary folder beside the target and renamed into place, so an
    interrupted run never leaves a folder that looks complete; leftover ``.synthetic-*.tmp-*``
    folders of killed runs are ignored and may be deleted. The same parameters always give
    byte-identical files (for a given Pillow build, whose JPEG encoder writes the bytes).

    Args:
        root: Folder holding the generated sets; default :func:`default_root`.
        num_train_ids: Number of training identities.
        num_test_ids: Number of test identities, disjoint from the training ones.
        num_cameras: Number of cameras, 2 to 9 (Market names have one camera digit).
        images_per_id_per_camera: Images of each identity from each camera.
        height: Image height in pixels.
        width: Image width in pixels.
        num_distractors: Gallery images of identity 0 (no one).
        seed: Seed of the whole set.

    Returns:
        The folder of the set.

    Raises:
        ValueError: If a parameter is out of range.

    Example:
        >>> root = ensure_synthetic("/tmp/data", num_train_ids=8, num_test_ids=4)  # doctest: +SKIP
        >>> len(list((root / "query").iterdir()))  # doctest: +SKIP
        12
    """
    params = {
        "num_train_ids": num_train_ids,
        "num_test_ids": num_test_ids,
        "num_cameras": num_cameras,
        "images_per_id_per_camera": images_per_id_per_camera,
        "height": height,
        "width": width,
        "num_distractors": num_distractors,
        "seed": seed,
    }
    _check_params(params)
    root = default_root() if root is None else Path(root)
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    final = root / f"synthetic-v{_VERSION}-{digest}"
    if final.is_dir():
        return final

    root.mkdir(parents=True, exist_ok=True)
    # Same parent as the target: the rename below must not cross file systems to be atomic.
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        _write_set(tmp, params)
        # mkdtemp makes the folder private (0700); the cache may be shared by several users.
        tmp.chmod(0o755)
        try:
            tmp.rename(final)
        except OSError:
            if not final.is_dir():
                raise
            # Another process finished the same set first; its files are identical to ours.
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _check_params(p: dict[str, int]) -> None:
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"ensure_synthetic: {what}, got {p}")

    need(p["num_train_ids"] >= 1 and p["num_test_ids"] >= 1, "need at least one train and test id")
    need(p["num_train_ids"] + p["num_test_ids"] <= 9999, "identities have 4 digits (<= 9999)")
    need(2 <= p["num_cameras"] <= 9, "num_cameras must be in 2..9")
    need(p["images_per_id_per_camera"] >= 1, "images_per_id_per_camera must be >= 1")
    need(
        (p["num_train_ids"] + p["num_test_ids"] + 1) * p["images_per_id_per_camera"] < 10**6,
        "frame numbers have 6 digits",
    )
    need(p["height"] >= 16 and p["width"] >= 8, "images must be at least 16x8")
    need(p["num_distractors"] >= 0, "num_distractors must be >= 0")


def _write_set(out: Path, p: dict[str, int]) -> None:
    """Renders every image of the set into ``out`` and writes ``params.json`` last."""
    seed, num_cameras, per_camera = p["seed"], p["num_cameras"], p["images_per_id_per_camera"]
    h, w = p["height"], p["width"]
    num_train = p["num_train_ids"]
    identities = make_identities(num_train + p["num_test_ids"], seed)
    cameras = make_cameras(num_cameras, seed)
    train, gallery, query = (out / d for d in ("bounding_box_train", "bounding_box_test", "query"))
    for folder in (train, gallery, query):
        folder.mkdir()

    def save(image: Image.Image, folder: Path, pid: int, camera: int, frame: int) -> None:
        name = f"{pid:04d}_c{camera + 1}s1_{frame:06d}_01.jpg"
        image.save(folder / name, quality=_JPEG_QUALITY, subsampling=0)

    for index, attributes in enumerate(identities):
        pid = index + 1
        # All cameras but one give a query; rotating which one is left out varies the pairs.
        query_cameras = {(pid + j) % num_cameras for j in range(num_cameras - 1)}
        for camera in range(num_cameras):
            for i in range(per_camera):
                rng = np.random.default_rng([seed, _STREAM_IMAGE, pid, camera, i])
                image = render_person(attributes, cameras[camera], rng, h, w)
                if pid <= num_train:
                    folder = train
                elif i == 0 and camera in query_cameras:
                    folder = query
                else:
                    folder = gallery
                save(image, folder, pid, camera, pid * per_camera + i)

    region_values = _region_values()
    for d in range(p["num_distractors"]):
        rng = np.random.default_rng([seed, _STREAM_DISTRACTOR, d])
        camera = d % num_cameras
        # A random outfit, not one of the identities' (the person is half out of view anyway).
        outfit = IdentityAttributes.from_regions(
            {region: values[rng.integers(len(values))] for region, values in region_values.items()}
        )
        save(_render(outfit, cameras[camera], rng, h, w, partial=True), gallery, 0, camera, d + 1)

    record = {
        "version": _VERSION,
        "params": p,
        "identities": {f"{i + 1:04d}": asdict(a) for i, a in enumerate(identities)},
    }
    (out / "params.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
