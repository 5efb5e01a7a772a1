"""The cameras of the synthetic set: illumination, background, blur, noise and framing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pmm_model.data.synthetic.identities import RGB
from pmm_model.data.synthetic.streams import STREAM_CAMERAS

__all__ = ["CameraParams", "make_cameras"]


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
    rng = np.random.default_rng([seed, STREAM_CAMERAS])
    textures = [_TEXTURES[i] for i in rng.permutation(len(_TEXTURES))]
    cameras = []
    for c in range(num_cameras):
        # Muted backgrounds, like the walls and pavements of real surveillance footage, so that
        # the person's saturated clothing stays the salient content.
        wall = muted_color(rng, 70, 190)
        floor = muted_color(rng, 50, 150)
        cameras.append(
            CameraParams(
                gain=float(rng.uniform(0.75, 1.15)),
                cast=_triple(rng.uniform(0.88, 1.12, size=3)),
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


def _triple(values: np.ndarray) -> tuple[float, float, float]:
    red, green, blue = (float(v) for v in values)
    return red, green, blue


def muted_color(rng: np.random.Generator, low: int, high: int) -> RGB:
    """A greyish colour: a grey level in ``[low, high)`` plus a small random tint."""
    grey = rng.uniform(low, high)
    red, green, blue = (int(v) for v in np.clip(grey + rng.uniform(-25, 25, size=3), 0, 255))
    return red, green, blue
