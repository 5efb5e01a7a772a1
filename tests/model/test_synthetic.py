"""Tests of the synthetic ReID set: determinism, Market layout, splits, clue design, caching."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import itertools
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pmm_model.data.synthetic import (
    REGIONS,
    IdentityAttributes,
    cache,
    default_root,
    ensure_synthetic,
    identities,
    make_cameras,
    make_identities,
    render_person,
)

# Tiny but complete: 3 cameras so that queries come from two of them.
TINY = {
    "num_train_ids": 6,
    "num_test_ids": 4,
    "num_cameras": 3,
    "images_per_id_per_camera": 2,
    "height": 64,
    "width": 32,
    "num_distractors": 2,
}
SPLITS = ("bounding_box_train", "bounding_box_test", "query")
MARKET_NAME = re.compile(r"^(\d{4})_c(\d)s1_(\d{6})_01\.jpg$")
# The pattern Market loaders apply to the file name.
MARKET_LOOSE = re.compile(r"([-\d]+)_c(\d)")


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(f.relative_to(folder)): hashlib.md5(f.read_bytes()).hexdigest()
        for f in sorted(folder.rglob("*"))
        if f.is_file()
    }


def _entries(folder: Path) -> list[tuple[int, int]]:
    """(pid, camera) of every image in ``folder``, parsed the way Market loaders do."""
    out = []
    for f in folder.iterdir():
        pid, camera = MARKET_LOOSE.search(f.name).groups()
        out.append((int(pid), int(camera)))
    return out


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_synthetic(tmp_path_factory.mktemp("tiny"), **TINY)


def test_same_parameters_give_identical_bytes(tiny_set: Path, tmp_path: Path) -> None:
    again = ensure_synthetic(tmp_path, **TINY)
    assert again.name == tiny_set.name
    assert _digests(again) == _digests(tiny_set)


def test_seed_changes_folder_and_images(tiny_set: Path, tmp_path: Path) -> None:
    other = ensure_synthetic(tmp_path, **TINY, seed=1)
    assert other.name != tiny_set.name
    a, b = _digests(tiny_set), _digests(other)
    assert a.keys() == b.keys()
    assert all(a[k] != b[k] for k in a if k.endswith(".jpg"))


def test_layout_and_market_names(tiny_set: Path) -> None:
    assert tiny_set.name.startswith("synthetic-v")
    assert sorted(p.name for p in tiny_set.iterdir()) == sorted([*SPLITS, "params.json"])
    for split in SPLITS:
        for f in (tiny_set / split).iterdir():
            pid, camera, _ = MARKET_NAME.match(f.name).groups()
            assert MARKET_LOOSE.search(f.name).groups() == (pid, camera)
            assert 1 <= int(camera) <= TINY["num_cameras"]
            with Image.open(f) as image:
                assert image.format == "JPEG"
                assert image.mode == "RGB"
                assert image.size == (TINY["width"], TINY["height"])

    cams, per_cam = TINY["num_cameras"], TINY["images_per_id_per_camera"]
    train = _entries(tiny_set / "bounding_box_train")
    gallery = _entries(tiny_set / "bounding_box_test")
    query = _entries(tiny_set / "query")
    assert len(train) == TINY["num_train_ids"] * cams * per_cam
    assert len(query) == TINY["num_test_ids"] * (cams - 1)
    test_images = TINY["num_test_ids"] * cams * per_cam
    assert len(gallery) == test_images - len(query) + TINY["num_distractors"]
    assert sum(pid == 0 for pid, _ in gallery) == TINY["num_distractors"]


def test_train_and_test_identities_are_disjoint(tiny_set: Path) -> None:
    train = {pid for pid, _ in _entries(tiny_set / "bounding_box_train")}
    test = {pid for pid, _ in _entries(tiny_set / "bounding_box_test")} - {0}
    assert train == set(range(1, TINY["num_train_ids"] + 1))
    assert test == set(range(TINY["num_train_ids"] + 1, TINY["num_train_ids"] + 5))
    assert {pid for pid, _ in _entries(tiny_set / "query")} == test


def test_every_query_has_a_gallery_match_in_another_camera(tiny_set: Path) -> None:
    gallery = set(_entries(tiny_set / "bounding_box_test"))
    query = _entries(tiny_set / "query")
    assert len(set(query)) == len(query)  # one query per (id, camera)
    for pid, camera in query:
        assert any(g_pid == pid and g_cam != camera for g_pid, g_cam in gallery)


def _default_num_ids() -> int:
    params = inspect.signature(ensure_synthetic).parameters
    return params["num_train_ids"].default + params["num_test_ids"].default


def _regions_apart(a: IdentityAttributes, b: IdentityAttributes) -> int:
    return sum(a.region(r) != b.region(r) for r in REGIONS)


@pytest.mark.parametrize("num_ids", [0, 1, 2, 3, 4, 5, 7, 8, 9, 17, 40, _default_num_ids()])
def test_identities_are_separated_and_come_in_lookalike_pairs(num_ids: int) -> None:
    ids = make_identities(num_ids)
    assert len(ids) == num_ids
    # Every pair differs in two regions or more: hiding any one region keeps all ids apart.
    for a, b in itertools.combinations(ids, 2):
        assert _regions_apart(a, b) >= 2, (a, b)
    for j in range(num_ids // 2):
        assert _regions_apart(ids[2 * j], ids[2 * j + 1]) == 2


@pytest.mark.parametrize("num_ids", [8, 9, 17, 40, _default_num_ids()])
def test_no_single_region_identifies_a_person(num_ids: int) -> None:
    ids = make_identities(num_ids)
    for name in REGIONS:
        worn = Counter(a.region(name) for a in ids)
        assert min(worn.values()) >= 2, (name, worn)


def test_default_config_shares_every_attribute_value() -> None:
    ids = make_identities(_default_num_ids())
    for field in dataclasses.fields(IdentityAttributes):
        worn = Counter(getattr(a, field.name) for a in ids)
        worn.pop(None, None)  # the bag colour of people without a bag
        assert min(worn.values()) >= 2, (field.name, worn)
        # Palettes are used in full, so the set exercises every clue value.
        assert len(worn) >= 2, field.name


def test_identities_and_cameras_depend_only_on_seed() -> None:
    assert make_identities(30, seed=3) == make_identities(30, seed=3)
    assert make_identities(30, seed=3) != make_identities(30, seed=4)
    assert make_cameras(4, seed=3) == make_cameras(4, seed=3)
    assert make_cameras(4, seed=3) != make_cameras(4, seed=4)


def test_render_person_is_deterministic_per_generator() -> None:
    person, camera = make_identities(8)[0], make_cameras(2)[1]

    def draw(seed: int) -> np.ndarray:
        return np.asarray(render_person(person, camera, np.random.default_rng(seed), 64, 32))

    assert draw(5).shape == (64, 32, 3)
    np.testing.assert_array_equal(draw(5), draw(5))
    assert not np.array_equal(draw(5), draw(6))


def _changed_rows(base: IdentityAttributes, region: str) -> tuple[float, np.ndarray]:
    """Renders ``base`` and a copy with every attribute of ``region`` changed, with the same pose
    and noise; returns the fraction of changed pixels and their row indices."""
    fields = REGIONS[region]
    values = identities.region_values()[region]
    other = next(
        v for v in values if all(x != y for x, y in zip(v, base.region(region), strict=True))
    )
    changed = dataclasses.replace(base, **dict(zip(fields, other, strict=True)))
    camera = dataclasses.replace(make_cameras(1)[0], person_height=0.9, x_offset=0.0)
    a, b = (
        np.asarray(render_person(p, camera, np.random.default_rng(7)), dtype=np.int16)
        for p in (base, changed)
    )
    diff = np.abs(a - b).max(axis=-1) > 30
    return float(diff.mean()), np.nonzero(diff)[0]


def test_each_clue_is_local_and_visible() -> None:
    # Shorts and a hand bag, so that skin and bag clues are both on show.
    base = IdentityAttributes(
        hair_color="black",
        hair_style="short",
        skin="light",
        upper_color="blue",
        logo_shape="circle",
        logo_color="white",
        lower_color="khaki",
        lower_style="shorts",
        shoe_color="red",
        bag_style="hand",
        bag_color="black",
    )
    centre = {}
    for region in REGIONS:
        fraction, rows = _changed_rows(base, region)
        # Visible (a few pixels at least) but small: no clue covers a quarter of the image.
        assert 0.005 < fraction < 0.25, (region, fraction)
        centre[region] = rows.mean() / 128
    # The clues sit where a person wears them, top to bottom.
    assert centre["head"] < 0.2
    assert centre["head"] < centre["torso"] < centre["legs"] < centre["feet"]
    assert centre["feet"] > 0.85
    assert 0.3 < centre["bag"] < 0.8


def test_second_call_reuses_the_folder(tiny_set: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = {f: f.stat().st_mtime_ns for f in tiny_set.rglob("*")}

    def fail(*args: object) -> None:
        raise AssertionError("regenerated an existing set")

    monkeypatch.setattr(cache, "_write_set", fail)
    assert ensure_synthetic(tiny_set.parent, **TINY) == tiny_set
    assert {f: f.stat().st_mtime_ns for f in tiny_set.rglob("*")} == before


def test_leftover_temp_folder_does_not_count_as_complete(tiny_set: Path, tmp_path: Path) -> None:
    leftover = tmp_path / f".{tiny_set.name}.tmp-killed"
    (leftover / "query").mkdir(parents=True)
    (leftover / "query" / "0007_c1s1_000021_01.jpg").write_bytes(b"half a file")
    root = ensure_synthetic(tmp_path, **TINY)
    assert root == tmp_path / tiny_set.name
    assert _digests(root) == _digests(tiny_set)


def test_interrupted_generation_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    real_render = cache.render_person

    def render_then_crash(*args: object, **kwargs: object) -> Image.Image:
        nonlocal calls
        calls += 1
        if calls > 5:
            raise KeyboardInterrupt
        return real_render(*args, **kwargs)

    monkeypatch.setattr(cache, "render_person", render_then_crash)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic(tmp_path, **TINY)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(cache, "render_person", real_render)
    root = ensure_synthetic(tmp_path, **TINY)
    assert len(list((root / "query").iterdir())) == TINY["num_test_ids"] * 2


def test_default_root_follows_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PMM_DATA_DIR", str(tmp_path))
    assert default_root() == tmp_path / "synthetic"
    monkeypatch.delenv("PMM_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_root() == tmp_path / ".cache" / "pmm" / "synthetic"


@pytest.mark.parametrize(
    "bad",
    [
        {"num_cameras": 1},
        {"num_cameras": 10},
        {"num_test_ids": 0},
        {"num_train_ids": 9990, "num_test_ids": 10},
        {"images_per_id_per_camera": 0},
        {"height": 8},
        {"num_distractors": -1},
    ],
)
def test_bad_parameters_raise(bad: dict[str, int], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ensure_synthetic"):
        ensure_synthetic(tmp_path, **{**TINY, **bad})
    assert list(tmp_path.iterdir()) == []
