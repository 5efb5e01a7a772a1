"""Drawing one person image: a pose, a camera's background, the clothes, the camera's look."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from pmm_model.data.synthetic.cameras import CameraParams, muted_color
from pmm_model.data.synthetic.identities import (
    BAG_COLORS,
    HAIR_COLORS,
    LOGO_COLORS,
    LOWER_COLORS,
    RGB,
    SHOE_COLORS,
    SKIN_TONES,
    UPPER_COLORS,
    IdentityAttributes,
)

__all__ = ["render_person"]

# anti-aliases the edges that ImageDraw leaves jagged.
_SUPERSAMPLE = 2


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
        >>> from pmm_model.data.synthetic import make_cameras, make_identities
        >>> person, camera = make_identities(4)[0], make_cameras(2)[0]
        >>> render_person(person, camera, np.random.default_rng(0)).size
        (64, 128)
    """
    return render_image(attributes, camera, rng, height, width, partial=False)


def render_image(
    attributes: IdentityAttributes,
    camera: CameraParams,
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    partial: bool,
) -> Image.Image:
    """Draws a person as :func:`render_person` does; ``partial`` pushes them half out of the box
    (a distractor: a detector's bad crop)."""
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
        draw.rectangle((x0, y0, x1, h), fill=muted_color(rng, 40, 200))
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
    # A bag colour is None only for bag_style "none" (see identities.region_values).
    if a.bag_style == "shoulder":
        # Strap from the far shoulder across the chest to the bag on the near hip.
        draw.line(
            [at(-0.09 * pose.bag_side, shoulder_y - 0.01), at(0.12 * pose.bag_side, 0.44)],
            fill=BAG_COLORS[cast(str, a.bag_color)],
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
            fill=BAG_COLORS[cast(str, a.bag_color)],
        )
    elif a.bag_style == "shoulder":
        s = pose.bag_side
        draw.rounded_rectangle(
            box(min(0.08 * s, 0.19 * s), 0.41, max(0.08 * s, 0.19 * s), 0.52),
            radius=0.015 * u,
            fill=BAG_COLORS[cast(str, a.bag_color)],
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
