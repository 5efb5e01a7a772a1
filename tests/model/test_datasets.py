"""Dataset layouts (tiny fixture trees with the real file names), registry and image reading."""

import logging
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from pmm_model.data.datasets import (
    Record,
    ReIDDataset,
    build_dataset,
    dataset_names,
    read_market_tree,
    register_dataset,
)
from pmm_model.data.images import ImageDataset


def write_image(path: Path, color=(200, 30, 30), fmt=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 8), color).save(path, format=fmt)


# Market naming PPPP_cCsS_FFFFFF_BB.jpg: pids 2 and 7 train; query pid 2/7; gallery with a
# junk image (-1) and a distractor (0000).
MARKET = {
    "bounding_box_train": [
        "0002_c1s1_000451_03.jpg",
        "0002_c2s1_000301_01.jpg",
        "0007_c3s3_077419_03.jpg",
        "0007_c6s1_003476_01.jpg",
    ],
    "query": ["0002_c5s1_000151_00.jpg", "0007_c2s3_070952_00.jpg"],
    "bounding_box_test": [
        "-1_c1s1_000401_03.jpg",
        "0000_c6s1_000246_04.jpg",
        "0002_c1s1_000551_01.jpg",
        "0007_c4s3_071478_01.jpg",
        "0007_c2s3_070977_01.jpg",
    ],
}
# DukeMTMC-reID naming PPPP_cC_fFFFFFFF.jpg.
DUKE = {
    "bounding_box_train": ["0001_c2_f0046182.jpg", "0001_c5_f0051341.jpg", "0003_c1_f0057461.jpg"],
    "query": ["0005_c2_f0046985.jpg"],
    "bounding_box_test": ["0005_c5_f0051781.jpg", "0019_c1_f0058462.jpg"],
}
# CUHK03-NP: Market naming with a running index, .png.
CUHK03 = {
    "bounding_box_train": ["0001_c1_1.png", "0001_c2_2.png", "0003_c1_1.png"],
    "query": ["0002_c1_1.png"],
    "bounding_box_test": ["0002_c2_2.png", "0004_c1_1.png"],
}


def write_tree(folder: Path, layout: dict) -> Path:
    for split, names in layout.items():
        for name in names:
            write_image(folder / split / name)
    (folder / "bounding_box_test" / "Thumbs.db").write_bytes(b"not an image")
    return folder


def test_market1501_parsing(tmp_path):
    write_tree(tmp_path / "Market-1501-v15.09.15", MARKET)
    data = build_dataset("market1501", tmp_path)
    assert data.root == str(tmp_path / "Market-1501-v15.09.15")
    # Train relabelled 0..P-1 in pid order; cameras 0-based.
    assert [(Path(p).name[:4], pid, cam) for p, pid, cam in data.train] == [
        ("0002", 0, 0),
        ("0002", 0, 1),
        ("0007", 1, 2),
        ("0007", 1, 5),
    ]
    assert (data.num_train_pids, data.num_train_cams) == (2, 4)
    # Query keeps the original pids; junk (-1) dropped, distractor (0) kept in the gallery.
    assert [(r.pid, r.camid) for r in data.query] == [(2, 4), (7, 1)]
    assert sorted(r.pid for r in data.gallery) == [0, 2, 7, 7]
    assert all(Path(r.img_path).is_file() for r in data.train + data.query + data.gallery)
    assert "train" in data.summary() and "gallery" in data.summary()


def test_root_may_be_the_distributed_folder(tmp_path):
    folder = write_tree(tmp_path / "Market-1501-v15.09.15", MARKET)
    assert (
        build_dataset("Market1501", folder).gallery == build_dataset("market1501", tmp_path).gallery
    )


def test_dukemtmcreid(tmp_path):
    write_tree(tmp_path / "DukeMTMC-reID", DUKE)
    data = build_dataset("dukemtmcreid", tmp_path)
    assert [(r.pid, r.camid) for r in data.train] == [(0, 1), (0, 4), (1, 0)]
    assert [(r.pid, r.camid) for r in data.gallery] == [(5, 4), (19, 0)]


@pytest.mark.parametrize(
    "name, variant",
    [("cuhk03np", "labeled"), ("cuhk03np-labeled", "labeled"), ("cuhk03np-detected", "detected")],
)
def test_cuhk03np_variants(tmp_path, name, variant):
    for v in ("labeled", "detected"):
        write_tree(tmp_path / "cuhk03-np" / v, CUHK03)
    data = build_dataset(name, tmp_path)
    assert data.root == str(tmp_path / "cuhk03-np" / variant)
    assert data.num_train_pids == 2 and [r.pid for r in data.query] == [2]
    assert build_dataset(name, tmp_path / "cuhk03-np").root == data.root


def write_msmt(base: Path, train_dir: str, test_dir: str) -> None:
    # List lines are "<pid folder>/<pid>_<index>_<camera 01..15>_<time>_....jpg <pid>".
    lists = {
        "train": (
            train_dir,
            ["0000/0000_000_01_0303morning_0015_0.jpg 0", "0001/0001_000_07_0303noon_0300_1.jpg 1"],
        ),
        "val": (train_dir, ["0000/0000_001_15_0303morning_0019_0.jpg 0"]),
        "query": (test_dir, ["0003/0003_000_02_0303afternoon_0100_0.jpg 3"]),
        "gallery": (
            test_dir,
            ["0003/0003_001_11_0303noon_0550_1.jpg 3", "0009/0009_000_04_0303morning_0020_0.jpg 9"],
        ),
    }
    for split, (folder, lines) in lists.items():
        (base / f"list_{split}.txt").parent.mkdir(parents=True, exist_ok=True)
        (base / f"list_{split}.txt").write_text("\n".join(lines) + "\n")
        for line in lines:
            write_image(base / folder / line.split()[0])


@pytest.mark.parametrize(
    "version, dirs", [("V1", ("train", "test")), ("V2", ("mask_train_v2", "mask_test_v2"))]
)
def test_msmt17_versions(tmp_path, version, dirs):
    write_msmt(tmp_path / f"MSMT17_{version}", *dirs)
    data = build_dataset("msmt17", tmp_path)
    assert data.name == f"msmt17 ({version})"
    # train + val merged; cameras 01, 07, 15 -> 0, 6, 14.
    assert [(r.pid, r.camid) for r in data.train] == [(0, 0), (1, 6), (0, 14)]
    assert [(r.pid, r.camid) for r in data.query] == [(3, 1)]
    assert [(r.pid, r.camid) for r in data.gallery] == [(3, 10), (9, 3)]
    assert all(Path(r.img_path).is_file() for r in data.train + data.query + data.gallery)


def test_msmt17_both_versions_need_a_choice(tmp_path):
    write_msmt(tmp_path / "MSMT17_V1", "train", "test")
    write_msmt(tmp_path / "MSMT17_V2", "mask_train_v2", "mask_test_v2")
    with pytest.raises(ValueError, match="pass version="):
        build_dataset("msmt17", tmp_path)
    assert build_dataset("msmt17", tmp_path, version="v2").name == "msmt17 (V2)"


def test_folder_and_registry(tmp_path):
    write_tree(tmp_path / "mine", MARKET)
    assert len(build_dataset("folder", tmp_path / "mine").gallery) == 4
    register_dataset(
        "test-mine", lambda root: read_market_tree(Path(root) / "mine", "mine"), overwrite=True
    )
    assert "test-mine" in dataset_names()
    assert build_dataset("test-mine", tmp_path).name == "mine"
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("test-mine", read_market_tree)


def test_synthetic(tmp_path):
    pytest.importorskip("pmm_model.data.synthetic")
    data = build_dataset(
        "synthetic",
        tmp_path,
        num_train_ids=3,
        num_test_ids=2,
        num_cameras=2,
        images_per_id_per_camera=1,
        num_distractors=1,
    )
    assert data.num_train_pids == 3 and data.name == "synthetic"
    assert sum(r.pid == 0 for r in data.gallery) == 1


# --------------------------------------------------------------------------- bad data


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown dataset name 'market'.*market1501"):
        build_dataset("market", "/nowhere")


def test_missing_folder_says_where(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"bounding_box_train.*Market-1501-v15\.09\.15"):
        build_dataset("market1501", tmp_path)
    with pytest.raises(FileNotFoundError, match="MSMT17_V1"):
        build_dataset("msmt17", tmp_path)
    with pytest.raises(ValueError, match="needs a root"):
        build_dataset("dukemtmcreid")


def test_empty_split_names_split_and_folder(tmp_path):
    layout = dict(MARKET, query=["-1_c1s1_000001_00.jpg"])  # only junk: empty once dropped
    write_tree(tmp_path, layout)
    folder = re.escape(str(tmp_path / "query"))
    with pytest.raises(ValueError, match=f"query split is empty.*{folder}"):
        build_dataset("folder", tmp_path)


def test_badly_named_file(tmp_path):
    write_tree(tmp_path, MARKET)
    write_image(tmp_path / "query" / "person3.jpg")
    with pytest.raises(ValueError, match=r"person3\.jpg.*Market naming"):
        build_dataset("folder", tmp_path)


def test_custom_factory_checks():
    register_dataset("test-empty", lambda root: ReIDDataset([], [], []), overwrite=True)
    with pytest.raises(ValueError, match="empty train split"):
        build_dataset("test-empty")
    with pytest.raises(ValueError, match=r"relabelled to 0\.\.P-1"):
        ReIDDataset([Record("a.jpg", 3, 0)], [], [])


def test_image_dataset_reads_rgb_and_transforms(tmp_path):
    write_image(tmp_path / "a.png")
    Image.new("L", (4, 8), 100).save(tmp_path / "b.jpg")
    records = [(str(tmp_path / "a.png"), 0, 1), (str(tmp_path / "b.jpg"), 1, 0)]
    img, pid, camid = ImageDataset(records)[1]
    assert (img.mode, img.size, pid, camid) == ("RGB", (4, 8), 1, 0)
    tensor, _, _ = ImageDataset(records, transform=lambda im: torch.zeros(im.size))[0]
    assert tensor.shape == (4, 8)


def test_corrupt_images(tmp_path, caplog):
    write_image(tmp_path / "good.jpg")
    (tmp_path / "garbage.jpg").write_bytes(b"\x00" * 100)
    jpeg = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    records = [(str(tmp_path / n), 0, 0) for n in ("good.jpg", "garbage.jpg", "truncated.jpg")]
    for index, name in ((1, "garbage.jpg"), (2, "truncated.jpg")):
        with pytest.raises(OSError, match=f"cannot read image .*{name}"):
            ImageDataset(records)[index]
    with caplog.at_level(logging.WARNING, logger="pmm_model.data.datasets"):
        ds = ImageDataset(records, skip_bad=True)
    assert (len(ds), ds.num_skipped) == (1, 2)
    assert "garbage.jpg" in caplog.text and "truncated.jpg" in caplog.text
    with pytest.raises(ValueError, match="no images left"):
        ImageDataset(records[1:], skip_bad=True)
