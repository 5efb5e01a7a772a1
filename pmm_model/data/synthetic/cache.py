"""Writing the synthetic set once into a cache folder in the Market-1501 layout."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from pmm_model.data.synthetic.cameras import make_cameras
from pmm_model.data.synthetic.identities import IdentityAttributes, make_identities, region_values
from pmm_model.data.synthetic.render import render_image, render_person
from pmm_model.data.synthetic.streams import STREAM_DISTRACTOR, STREAM_IMAGE

__all__ = ["default_root", "ensure_synthetic"]

# Bump whenever the output changes (drawing, identities, layout): the version is part of the cache
# folder's name, so stale sets are never mistaken for current ones.
_VERSION = 1
# JPEG like Market-1501 itself (loaders glob ``*.jpg``); high quality and no chroma subsampling so
# that a logo a few pixels wide keeps its colour.
_JPEG_QUALITY = 95


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
                rng = np.random.default_rng([seed, STREAM_IMAGE, pid, camera, i])
                image = render_person(attributes, cameras[camera], rng, h, w)
                if pid <= num_train:
                    folder = train
                elif i == 0 and camera in query_cameras:
                    folder = query
                else:
                    folder = gallery
                save(image, folder, pid, camera, pid * per_camera + i)

    outfits = region_values()
    for d in range(p["num_distractors"]):
        rng = np.random.default_rng([seed, STREAM_DISTRACTOR, d])
        camera = d % num_cameras
        # A random outfit, not one of the identities' (the person is half out of view anyway).
        outfit = IdentityAttributes.from_regions(
            {region: values[rng.integers(len(values))] for region, values in outfits.items()}
        )
        save(
            render_image(outfit, cameras[camera], rng, h, w, partial=True),
            gallery,
            0,
            camera,
            d + 1,
        )

    record = {
        "version": _VERSION,
        "params": p,
        "identities": {f"{i + 1:04d}": asdict(a) for i, a in enumerate(identities)},
    }
    (out / "params.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
