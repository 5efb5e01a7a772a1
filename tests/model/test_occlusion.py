"""The occluded-query protocol (docs/datasets.md#occluded-queries): fixed, deterministic, and
hiding exactly its box in the queries alone."""

from __future__ import annotations

import os

import numpy as np
import pytest
from oracles import tiny_synthetic_set
from PIL import Image

from pmm_model.data.datasets import build_dataset
from pmm_model.data.occlusion import (
    FILLS,
    OCCLUDERS,
    Occluder,
    occlude,
    occluded_queries,
    occluder_for,
)

NAMES = [f"{p:04d}_c{c}s1_{f:06d}_01.jpg" for p in range(40) for c in range(1, 5) for f in range(3)]


def test_the_protocol_is_fixed() -> None:
    # Golden values: the grid's occluded numbers are only comparable while these hold. A change
    # to an occluder, a fill or the hashing must bump PROTOCOL_VERSION and update these.
    assert [(o.name, o.fill) for o in map(occluder_for, NAMES[:4])] == [
        ("legs", "light"),
        ("right-side", "dark"),
        ("left-side", "light"),
        ("legs", "noise"),
    ]
    assert occluder_for("0001_c1s1_000151_01.jpg").box == pytest.approx(
        (0.0, 0.53314, 1.0, 0.93314), abs=1e-5
    )


def test_the_occluder_depends_on_the_file_name_alone() -> None:
    name = NAMES[7]
    assert occluder_for(name) == occluder_for(f"/data/a/{name}") == occluder_for(f"b/{name}")
    assert len({occluder_for(other) for other in NAMES[:20]}) > 10  # names do change the draw


def test_every_occluder_and_fill_is_used_and_boxes_hide_35_to_50_percent() -> None:
    drawn = [occluder_for(name) for name in NAMES]
    names, fills = {o.name for o in drawn}, {o.fill for o in drawn}
    assert names == {o.name for o in OCCLUDERS} and fills == set(FILLS)
    for occluder in drawn:
        left, top, right, bottom = occluder.box
        assert 0 <= left < right <= 1 and 0 <= top < bottom <= 1
        assert 0.35 <= (right - left) * (bottom - top) <= 0.5 + 1e-9


@pytest.mark.parametrize("fill", FILLS)
def test_occlude_paints_its_box_and_nothing_else(fill: str) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (128, 64, 3), dtype=np.uint8)
    occluder = Occluder("test", (0.25, 0.125, 0.75, 0.5), fill=fill, seed=3)
    hidden = np.asarray(occlude(Image.fromarray(pixels), occluder))
    inside = np.zeros((128, 64), dtype=bool)
    inside[16:64, 16:48] = True  # rows 0.125-0.5 of 128, columns 0.25-0.75 of 64
    assert np.array_equal(hidden[~inside], pixels[~inside])
    # The texture is the same whatever the image (identity-free) and repeats for one seed.
    other = np.asarray(occlude(Image.fromarray(255 - pixels), occluder))
    assert np.array_equal(hidden[inside], other[inside])
    assert not np.array_equal(hidden[inside], pixels[inside])


def test_occluded_queries_replace_the_queries_only(tmp_path) -> None:
    data = build_dataset("folder", tiny_synthetic_set(tmp_path / "data"))
    occluded = occluded_queries(data, tmp_path / "cache")
    assert occluded.train is data.train and occluded.gallery is data.gallery
    assert [(r.pid, r.camid) for r in occluded.query] == [(r.pid, r.camid) for r in data.query]
    for clean, hidden in zip(data.query, occluded.query, strict=True):
        assert hidden.img_path.endswith(".png") and os.path.dirname(hidden.img_path) != (
            os.path.dirname(clean.img_path)
        )
        with Image.open(clean.img_path) as image:
            expected = np.asarray(occlude(image, occluder_for(clean.img_path)))
        with Image.open(hidden.img_path) as image:
            assert np.array_equal(np.asarray(image), expected)  # PNG: lossless
    # A second call reuses the files; no temporary file is left behind.
    stamps = [os.stat(r.img_path).st_mtime_ns for r in occluded.query]
    again = occluded_queries(data, tmp_path / "cache")
    assert [os.stat(r.img_path).st_mtime_ns for r in again.query] == stamps
    folder = os.path.dirname(occluded.query[0].img_path)
    assert not [name for name in os.listdir(folder) if name.endswith(".tmp")]
