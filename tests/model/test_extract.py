"""Feature extraction (``pmm_model.FeatureExtractor``, ``pmm-extract``) against the evaluate path.

The checkpoints and images come from :mod:`oracles.deploy`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from oracles.deploy import HEIGHT, WIDTH, make_checkpoint, make_tree
from PIL import Image

from pmm_model.apps.extract import FeatureExtractor, read_image_list
from pmm_model.cli import extract as cli
from pmm_model.data.datasets import read_market_tree
from pmm_model.data.loaders import build_test_loaders
from pmm_model.evaluation.evaluator import extract_features
from pmm_model.run.checkpoint import load_model


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("tree"))


@pytest.fixture(scope="module", params=["pmm", "baseline"])
def any_checkpoint(request, tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp(request.param) / "ckpt.pt", request.param)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A PMM checkpoint, for what does not depend on the network."""
    return make_checkpoint(tmp_path_factory.mktemp("pmm") / "ckpt.pt", "pmm")


def evaluate_path(checkpoint: Path, tree: Path, flip: bool, batch_size: int):
    """The query features exactly as ``pmm-evaluate`` computes them."""
    data = read_market_tree(tree)
    model, config = load_model(checkpoint)
    query_loader, _ = build_test_loaders(data, config.height, config.width, batch_size)
    return data, extract_features(model, query_loader, "cpu", flip)


@pytest.mark.parametrize("flip", [False, True])
def test_query_embeddings_are_bit_equal_to_the_evaluate_path(any_checkpoint, tree, flip):
    checkpoint = any_checkpoint
    data, (feats, pids, camids) = evaluate_path(checkpoint, tree, flip, batch_size=4)
    expected = torch.nn.functional.normalize(feats, dim=1)
    extractor = FeatureExtractor(checkpoint, device="cpu", flip=flip, batch_size=4)

    from_records = extractor.extract(data.query)
    assert torch.equal(from_records.features, expected)  # bit-equal, not just close
    np.testing.assert_array_equal(from_records.pids, pids)
    np.testing.assert_array_equal(from_records.camids, camids)

    # The same images in the same batches from the folder (ids from the Market names).
    from_folder = extractor.extract(tree / "query")
    assert torch.equal(from_folder.features, expected)
    np.testing.assert_array_equal(from_folder.pids, pids)
    np.testing.assert_array_equal(from_folder.camids, camids)
    assert from_records.flip is flip and from_records.normalized


def test_raw_features_and_batch_size(checkpoint, tree):
    _, (feats, _, _) = evaluate_path(checkpoint, tree, flip=False, batch_size=4)
    raw = FeatureExtractor(checkpoint, device="cpu", normalize=False, batch_size=4)
    assert torch.equal(raw(read_market_tree(tree).query), feats)
    # Another batch size changes the BLAS blocking, not the result beyond float rounding.
    other = FeatureExtractor(checkpoint, device="cpu", batch_size=1)
    np.testing.assert_allclose(
        other(read_market_tree(tree).query),
        torch.nn.functional.normalize(feats, dim=1),
        rtol=0,
        atol=1e-6,
    )


def test_pil_images_tensors_and_paths_agree(checkpoint, tree):
    extractor = FeatureExtractor(checkpoint, device="cpu", batch_size=8)
    paths = sorted((tree / "query").iterdir())
    from_paths = extractor.extract(paths)
    assert from_paths.names == [str(p) for p in paths]
    pictures = [Image.open(p) for p in paths]
    assert torch.equal(extractor(pictures), from_paths.features)
    batch = extractor.preprocess(paths)
    assert batch.shape == (len(paths), 3, HEIGHT, WIDTH)
    assert torch.equal(extractor(batch), from_paths.features)
    # One image alone is another batch shape: equal up to float rounding.
    np.testing.assert_allclose(extractor(batch[0]), from_paths.features[:1], rtol=0, atol=1e-6)
    assert torch.equal(extractor(pictures[0]), extractor(batch[0]))
    one_file = extractor.extract(paths[0])  # an image file, not a list file
    assert one_file.names == [paths[0].name] and one_file.pids.tolist() == [1]
    assert torch.equal(one_file.features, extractor(batch[0]))
    in_memory = extractor.extract(pictures)
    assert in_memory.names == [str(i) for i in range(len(paths))] and in_memory.pids is None


def test_folder_names_and_ids(tmp_path, checkpoint):
    make_tree(tmp_path / "tree")
    (tmp_path / "tree" / "query" / "notes.txt").write_text("not an image")
    out = FeatureExtractor(checkpoint, device="cpu").extract(tmp_path / "tree" / "query")
    assert out.names[0] == "0001_c1s1_000000_01.jpg" and len(out.names) == 5
    assert out.pids.tolist() == [1, 2, 3, 4, 5] and out.camids.tolist() == [0, 1, 0, 1, 0]
    # A name outside the Market layout: the ids of the whole set are unknown, not guessed.
    Image.new("RGB", (20, 40)).save(tmp_path / "tree" / "query" / "street.png")
    mixed = FeatureExtractor(checkpoint, device="cpu").extract(tmp_path / "tree" / "query")
    assert len(mixed.names) == 6 and mixed.pids is None and mixed.camids is None


def test_list_file(tmp_path, tree, checkpoint):
    query = sorted((tree / "query").iterdir())
    listing = tmp_path / "lists" / "images.txt"
    listing.parent.mkdir()
    listing.write_text(
        f"# image pid camid\n{query[1]} 7 3\n\n{Path('..') / query[2].relative_to(tree.parent)}\n"
    )
    (tmp_path / query[2].relative_to(tree.parent)).parent.mkdir(parents=True)
    (tmp_path / query[2].relative_to(tree.parent)).write_bytes(query[2].read_bytes())
    entries = read_image_list(listing)
    assert entries[0] == (str(query[1]), (7, 3))
    assert entries[1][1] == (3, 0)  # from the Market name
    out = FeatureExtractor(checkpoint, device="cpu").extract(listing)
    assert out.pids.tolist() == [7, 3] and out.camids.tolist() == [3, 0]
    assert torch.equal(out.features, FeatureExtractor(checkpoint, device="cpu")(query[1:3]))

    listing.write_text(f"{query[1]} 7\n")
    with pytest.raises(ValueError, match=r"images.txt:1: expected '<image path>'"):
        read_image_list(listing)
    listing.write_text("# nothing\n")
    with pytest.raises(ValueError, match="names no images"):
        read_image_list(listing)


def test_bad_images_named_or_skipped(tmp_path, tree, checkpoint):
    folder = tmp_path / "imgs"
    folder.mkdir()
    good = sorted((tree / "query").iterdir())[:3]
    for p in good:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "0009_c1s1_000009_01.jpg").write_bytes(b"not a jpeg")
    extractor = FeatureExtractor(checkpoint, device="cpu")
    with pytest.raises(OSError, match=r"cannot read image .*0009_c1s1_000009_01\.jpg"):
        extractor.extract(folder)
    out = extractor.extract(folder, skip_bad_images=True)
    assert out.skipped == ["0009_c1s1_000009_01.jpg"]
    assert out.names == [p.name for p in good]
    assert torch.equal(out.features, extractor(good))


def test_bad_arguments(tmp_path, checkpoint, tree):
    with pytest.raises(ValueError, match="amp=True needs a CUDA device, got 'cpu'"):
        FeatureExtractor(checkpoint, device="cpu", amp=True)
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        FeatureExtractor(checkpoint, device="cpu", batch_size=0)
    with pytest.raises(FileNotFoundError, match="no such file"):
        FeatureExtractor(tmp_path / "none.pt")
    extractor = FeatureExtractor(checkpoint, device="cpu")
    with pytest.raises(
        ValueError, match=r"float \(3, 64, 32\) or \(N, 3, 64, 32\).*\(2, 3, 32, 32\)"
    ):
        extractor(torch.zeros(2, 3, 32, 32))
    with pytest.raises(TypeError, match="got int"):
        extractor(42)
    with pytest.raises(TypeError, match="got an empty sequence"):
        extractor([])
    with pytest.raises(TypeError, match=r"\['Image', 'str'\]"):
        extractor([Image.new("RGB", (8, 8)), "a.jpg"])
    with pytest.raises(FileNotFoundError, match="no such folder or list file"):
        extractor(tmp_path / "nowhere")
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)))
    with pytest.raises(ValueError, match=r"blob\.bin: not a text list file"):
        extractor(tmp_path / "blob.bin")
    with pytest.raises(FileNotFoundError, match="1 files do not exist"):
        extractor([tmp_path / "missing.jpg"])
    with pytest.raises(ValueError, match=r"must end in \.npz"):
        extractor.extract(tree / "query").save(tmp_path / "f.npy")


def test_cli_writes_npz(tmp_path, tree, checkpoint, capsys):
    out = tmp_path / "q.npz"
    data_args = ["--data", "folder", "--root", str(tree)]
    cli.main(["--checkpoint", str(checkpoint), *data_args, "--out", str(out), "--flip"])
    assert f"wrote {out}: 5 embeddings of dim" in capsys.readouterr().out
    data, (feats, pids, camids) = evaluate_path(checkpoint, tree, flip=True, batch_size=64)
    saved = np.load(out)  # no pickle needed
    assert sorted(saved.files) == sorted(
        ["features", "names", "skipped", "normalized", "flip", "pids", "camids"]
    )
    np.testing.assert_array_equal(saved["features"], torch.nn.functional.normalize(feats).numpy())
    np.testing.assert_array_equal(saved["pids"], pids)
    np.testing.assert_array_equal(saved["camids"], camids)
    assert saved["names"].tolist() == [r.img_path for r in data.query]
    assert bool(saved["flip"]) and bool(saved["normalized"]) and saved["skipped"].size == 0


def test_cli_bad_image_and_arguments(tmp_path, tree, checkpoint, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(next((tree / "query").iterdir()).read_bytes())
    (folder / "b.jpg").write_bytes(b"junk")
    base = ["--checkpoint", str(checkpoint), "--images", str(folder), "--no-progress"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*base, "--out", str(tmp_path / "f.npz"), "--workers", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read image" in err and "b.jpg" in err
    assert "--skip-bad-images" in err
    result = cli.main([*base, "--out", str(tmp_path / "f.npz"), "--skip-bad-images"])
    assert result.skipped == ["b.jpg"]
    assert "skipped 1 unreadable images: b.jpg" in capsys.readouterr().out
    assert np.load(tmp_path / "f.npz")["skipped"].tolist() == ["b.jpg"]

    for argv, message in [
        ([*base, "--out", str(tmp_path / "f.txt")], "--out: must end in .npz"),
        ([*base, "--out", str(tmp_path / "f.npz"), "--root", "x"], "--root: only with --data"),
        (
            [*base, "--out", str(tmp_path / "f.npz"), "--device", "cpu", "--amp"],
            "argument --amp: float16 autocast needs a CUDA device",
        ),
        (["--checkpoint", "none.pt", "--images", "x", "--out", "f.npz"], "no such file"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
