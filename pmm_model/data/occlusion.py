"""The occluded-query protocol: part of each query person hidden, the gallery left as it is.

Occluded ReID (Occluded-Duke, Occluded-REID) asks whether a network still finds a person whose
body is partly hidden by an obstacle. PMM's claim is about exactly that: hard-mixing the most
salient blocks during training should stop the network from relying on one region, so it should
hold up better when a region is hidden. This module turns any data set's queries into occluded
ones (docs/datasets.md#occluded-queries), deterministically:

- every query image gets one occluder, an axis-aligned box over a body region that carries an
  identity clue on the synthetic set (:data:`OCCLUDERS`: the torso band with the upper-body
  colour, the logo and the bag strap; the leg band; the lower half; the left or the right side),
  filled with one of four identity-free textures (:data:`FILLS`);
- which occluder, which fill and a small shift of the box (up to :data:`JITTER` of the image on
  each axis) come from a SHA-256 of the protocol version and the image's file name alone, so
  the same image is occluded the same way on every machine, in any order, whatever else the
  split holds;
- the gallery and the training split are untouched.

:func:`occluded_queries` writes the occluded copies (PNG, so that the visible pixels stay
exactly the original ones) into a cache folder once and returns the data set with its queries
replaced: identities and cameras unchanged. The protocol is fixed by :data:`PROTOCOL_VERSION`;
changing an occluder, a fill or the hashing is a new version.

Example:
    >>> occluder_for("0001_c1s1_000151_01.jpg").name
    'legs'
    >>> [round(v, 3) for v in occluder_for("0001_c1s1_000151_01.jpg").box]
    [0.0, 0.533, 1.0, 0.933]
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from pmm_model.data.datasets import Record, ReIDDataset
from pmm_model.data.synthetic.cache import default_root

__all__ = [
    "EVAL_PROTOCOLS",
    "FILLS",
    "JITTER",
    "OCCLUDERS",
    "PROTOCOL_VERSION",
    "Occluder",
    "contact_sheet",
    "occlude",
    "occluded_queries",
    "occluder_for",
    "with_protocol",
]

PROTOCOL_VERSION = 1
# The evaluation protocols: the data set's own queries, or their occluded copies.
EVAL_PROTOCOLS = ("standard", "occluded")


@dataclass(frozen=True)
class Occluder:
    """One occluder: a box in fractions of the image and the texture that fills it.

    Attributes:
        name: the region it hides.
        box: ``(left, top, right, bottom)`` in fractions of the image width and height.
        fill: one of :data:`FILLS`.
        seed: the texture's seed (the ``noise`` and ``stripes`` fills draw from it).
    """

    name: str
    box: tuple[float, float, float, float]
    fill: str = "dark"
    seed: int = 0


# The regions, as fractions of the person box. On the synthetic set (128x64) the torso band
# spans the shoulders to the waist and the leg band the waist to the ankles; each box hides
# 35-50 % of the image, the range of Occluded-Duke's occluded queries.
OCCLUDERS: tuple[Occluder, ...] = (
    Occluder("torso", (0.0, 0.20, 1.0, 0.55)),
    Occluder("legs", (0.0, 0.50, 1.0, 0.90)),
    Occluder("lower-half", (0.0, 0.50, 1.0, 1.00)),
    Occluder("left-side", (0.0, 0.15, 0.55, 1.00)),
    Occluder("right-side", (0.45, 0.15, 1.0, 1.00)),
)
# Identity-free textures: a dark and a light obstacle, a fence (vertical stripes), clutter.
FILLS: tuple[str, ...] = ("dark", "light", "stripes", "noise")
JITTER = 0.05


def _digest(name: str) -> bytes:
    return hashlib.sha256(f"pmm-occluded-v{PROTOCOL_VERSION}:{name}".encode()).digest()


def occluder_for(file_name: str) -> Occluder:
    """The occluder of the image named ``file_name`` (its base name counts, not its folder)."""
    digest = _digest(os.path.basename(file_name))
    base = OCCLUDERS[digest[0] % len(OCCLUDERS)]
    # Shift the box by up to JITTER on each axis, keeping it inside the image.
    dx = (digest[2] / 255 * 2 - 1) * JITTER
    dy = (digest[3] / 255 * 2 - 1) * JITTER
    left, top, right, bottom = base.box
    dx = min(max(dx, -left), 1 - right)
    dy = min(max(dy, -top), 1 - bottom)
    return replace(
        base,
        box=(left + dx, top + dy, right + dx, bottom + dy),
        fill=FILLS[digest[1] % len(FILLS)],
        seed=int.from_bytes(digest[4:8], "little"),
    )


def _texture(fill: str, seed: int, height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if fill == "dark":
        base = np.full((height, width, 3), (45, 45, 50), dtype=np.float64)
        return base + rng.normal(0, 4, (height, width, 3))
    if fill == "light":
        base = np.full((height, width, 3), (200, 198, 190), dtype=np.float64)
        return base + rng.normal(0, 4, (height, width, 3))
    if fill == "stripes":
        period = int(rng.integers(4, 9))
        columns = (np.arange(width) // (period // 2)) % 2 == 0
        stripes = np.where(columns[None, :, None], 160.0, 70.0)
        return np.broadcast_to(stripes, (height, width, 3)).copy()
    if fill == "noise":
        return rng.uniform(0, 255, (height, width, 3))
    raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")


def occlude(image: Image.Image, occluder: Occluder) -> Image.Image:
    """``image`` (RGB) with ``occluder``'s box painted over; pixels outside it are unchanged.

    Example:
        >>> image = Image.new("RGB", (64, 128), (255, 0, 0))
        >>> hidden = occlude(image, Occluder("torso", (0.0, 0.25, 1.0, 0.5)))
        >>> changed = (np.asarray(hidden) != np.asarray(image)).any(-1)
        >>> int(changed.sum()) == 64 * 32, bool(changed[32:64].all())  # rows 32-63, every column
        (True, True)
    """
    pixels = np.asarray(image.convert("RGB")).copy()
    height, width = pixels.shape[:2]
    left, top, right, bottom = occluder.box
    x0, x1 = round(left * width), round(right * width)
    y0, y1 = round(top * height), round(bottom * height)
    texture = _texture(occluder.fill, occluder.seed, y1 - y0, x1 - x0)
    pixels[y0:y1, x0:x1] = np.clip(np.round(texture), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def _cache_folder(data: ReIDDataset, cache: Path) -> Path:
    # One folder per protocol version and source query set (its resolved folder), so two data
    # sets, or two roots of one, never share occluded files.
    source = os.path.dirname(os.path.abspath(data.query[0].img_path))
    key = hashlib.sha256(source.encode()).hexdigest()[:12]
    return cache / f"occluded-v{PROTOCOL_VERSION}" / f"{data.name or 'data'}-{key}"


def default_cache() -> Path:
    """Where occluded copies go: the data cache the synthetic set lives in (``$PMM_DATA_DIR``
    if set, else ``~/.cache/pmm``)."""
    return default_root().parent


def occluded_queries(data: ReIDDataset, cache: str | os.PathLike | None = None) -> ReIDDataset:
    """``data`` with every query replaced by its occluded copy (identities and cameras kept).

    The copies are written once, as PNG, under ``cache`` (default :func:`default_cache`), each
    through a temporary file renamed into place, so an interrupted run never leaves a partial
    image that a later one would read; existing copies are reused.

    Raises:
        OSError: a query image cannot be read, or the cache folder cannot be written (the
            message names the file).
    """
    folder = _cache_folder(data, Path(cache) if cache is not None else default_cache())
    folder.mkdir(parents=True, exist_ok=True)
    queries = []
    for record in data.query:
        name = os.path.basename(record.img_path)
        target = folder / (os.path.splitext(name)[0] + ".png")
        if not target.is_file():
            with Image.open(record.img_path) as image:
                hidden = occlude(image, occluder_for(name))
            temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            hidden.save(temporary, format="PNG")
            os.replace(temporary, target)
        queries.append(Record(str(target), record.pid, record.camid))
    return ReIDDataset(
        data.train, queries, data.gallery, name=f"{data.name}-occluded", root=data.root
    )


def with_protocol(
    data: ReIDDataset, protocol: str, cache: str | os.PathLike | None = None
) -> ReIDDataset:
    """``data`` as evaluated under ``protocol`` (one of :data:`EVAL_PROTOCOLS`).

    Raises:
        ValueError: an unknown protocol (the message lists the valid ones).
        OSError: see :func:`occluded_queries`.
    """
    if protocol == "standard":
        return data
    if protocol == "occluded":
        return occluded_queries(data, cache)
    raise ValueError(f"protocol must be one of {', '.join(EVAL_PROTOCOLS)}, got {protocol!r}")


def contact_sheet(records: list[Record], columns: int = 8) -> Image.Image:
    """The first ``columns`` query images over their occluded copies: the docs' picture.

    ``records`` are the clean queries; the sheet has two rows (clean, occluded).
    """
    images = []
    for record in records[:columns]:
        with Image.open(record.img_path) as image:
            clean = image.convert("RGB")
        images.append((clean, occlude(clean, occluder_for(record.img_path))))
    width, height = images[0][0].size
    gap = 4
    sheet = Image.new("RGB", (columns * (width + gap) + gap, 2 * (height + gap) + gap), "white")
    for i, (clean, hidden) in enumerate(images):
        x = gap + i * (width + gap)
        sheet.paste(clean.resize((width, height)), (x, gap))
        sheet.paste(hidden.resize((width, height)), (x, 2 * gap + height))
    return sheet
