"""Data loading: workers never outlive a failure, odd files follow one rule, bad data stops early.

Loader workers end with the process on any failure (issue 25 item 1: the hang is a process-exit
property, so those cases run in a subprocess under a timeout); extraction and the loaders treat
odd files alike (item 9); a batch that cannot fit is refused before reading (item 3). The
evaluation protocol is checked at loading; bad images, bombs and FIFOs are named before training
(issue 16 items 7, 8, 11).
"""

import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from oracles import tiny_synthetic_set
from oracles.runs import (
    last_line,
    run_train,
    tiny_run_argv,
)
from PIL import Image
from torch.utils.data import DataLoader

import pmm_model.cli.evaluate as evaluate_cli
from pmm_model.data.datasets import Record, build_dataset, check_protocol
from pmm_model.data.images import ImageDataset, UnreadableImageError, image_problem, read_image
from pmm_model.run.engine import Engine

ROOT = Path(__file__).resolve().parents[2]
EXIT_WITHIN_S = 60  # torch's import and the workers' start take seconds; a hang is forever


def _python(code, *args, timeout=EXIT_WITHIN_S):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    try:
        return subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the process did not exit within {timeout} s (its loader workers hang)")


def _truncated_jpg(path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])  # corrupt past its header


# Every way an error can leave a program: caught and exited inside the handler (the CLIs),
# a traceback, and a caught error after which the program returns normally.
_ENDINGS = {
    "exit in handler": "try:\n    run()\nexcept OSError as err:\n    sys.exit(1)\n",
    "traceback": "run()\n",
    "kept error": "try:\n    run()\nexcept OSError as err:\n    KEPT = err\n",
}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("workers", "ending"), [(1, "exit in handler"), (3, "traceback"), (2, "kept error")]
)
def test_a_worker_s_error_ends_the_process_with_its_workers(tmp_path, workers, ending):
    _truncated_jpg(tmp_path / "a.jpg")
    code = (
        "import sys\n"
        "from pmm_model.data.images import ImageDataset\n"
        "from torch.utils.data import DataLoader\n"
        "from pmm_model.data import loaders\n"
        "def run():\n"
        "    records = [(sys.argv[1], 0, 1)] * 8\n"
        "    loader = DataLoader(ImageDataset(records), num_workers=int(sys.argv[2]),\n"
        "                        worker_init_fn=loaders._ignore_stop_signals)\n"
        "    for _ in loader:\n"
        "        pass\n"
    ) + _ENDINGS[ending]
    done = _python(code, tmp_path / "a.jpg", workers)
    assert done.returncode == (0 if ending == "kept error" else 1), done.stderr[-2000:]


@pytest.mark.slow
def test_train_with_workers_exits_after_an_image_corrupt_past_its_header(tmp_path):
    root = tiny_synthetic_set(tmp_path / "data", num_train_ids=4, num_test_ids=2,
                              images_per_id_per_camera=1, num_distractors=1)  # fmt: skip
    for path in (Path(root) / "bounding_box_train").glob("*.jpg"):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
    argv = [
        "--preset", "demo", "--data", "folder", "--root", root, "--height", "64", "--width",
        "32", "--ids-per-batch", "2", "--images-per-id", "2", "--feature-dim", "32",
        "--workers", "2", "--epochs", "1", "--device", "cpu", "--output-dir", tmp_path / "run",
    ]  # fmt: skip
    done = _python("import sys\nfrom pmm_model.cli.train import main\nmain(sys.argv[1:])", *argv)
    assert done.returncode == 1 and "cannot read image" in done.stderr.strip().splitlines()[-1]


# ---- issue 25 item 9: extraction follows the dataset loaders' rules ------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from oracles.deploy import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("pmm") / "ckpt.pt", "pmm")


def _odd_tree(folder):
    folder.mkdir()
    Image.new("RGB", (8, 16)).save(folder / "0001_c1s1_01.jpg")
    os.mkfifo(folder / "fifo.jpg")
    (folder / "dir.jpg").mkdir()
    (folder / "dangling.jpg").symlink_to(folder / "missing.jpg")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    return folder


def test_extraction_names_what_it_leaves_out_as_the_loaders_do(tmp_path, checkpoint, caplog):
    from pmm_model.apps.extract import FeatureExtractor

    folder = _odd_tree(tmp_path / "imgs")
    extractor = FeatureExtractor(checkpoint, device="cpu", progress=False)
    with pytest.raises(OSError, match=r"dangling\.jpg"):  # as a loader refuses it
        extractor.extract(folder)
    out = extractor.extract(folder, skip_bad_images=True)
    assert out.names == ["0001_c1s1_01.jpg"]
    assert sorted(out.skipped) == ["dangling.jpg", "dir.jpg", "fifo.jpg", "loop.jpg"]


@pytest.mark.parametrize("name", ["0001_c0s1_01.jpg", "-2_c1s1_01.jpg"])
def test_a_market_name_out_of_range_is_refused_as_the_loaders_do(tmp_path, checkpoint, name):
    from pmm_model.apps.extract import FeatureExtractor
    from pmm_model.data.datasets import read_market_tree

    for split in ("bounding_box_train", "query", "bounding_box_test"):
        (tmp_path / split).mkdir()
        Image.new("RGB", (8, 16)).save(tmp_path / split / name)
    with pytest.raises(ValueError, match="out of range"):
        read_market_tree(tmp_path)
    with pytest.raises(ValueError, match=rf"{name}: pid .* out of range"):
        FeatureExtractor(checkpoint, device="cpu").extract(tmp_path / "query")


# ---- issue 25 item 3: a batch that cannot fit is refused before any image is read ----------------


def test_an_absurd_input_size_is_refused_before_reading_images(tmp_path):
    from pmm_model.data.datasets import ReIDDataset
    from pmm_model.data.loaders import build_test_loaders

    # Records of files that do not exist: reading any of them would fail differently.
    records = [(str(tmp_path / f"{i}.jpg"), i, 0) for i in range(2)]
    data = ReIDDataset(records, records, records, name="x")
    with pytest.raises(
        ValueError,
        match=r"^testing: a batch of 128 images of 100000x100000 "
        r"needs at least \d+\.\d GiB of memory, and \d+\.\d GiB is available",
    ):
        build_test_loaders(data, 100000, 100000, batch_size=128)


def test_the_estimate_is_compared_with_what_the_process_may_allocate(monkeypatch):
    from pmm_model.data import loaders

    needed = 64 * 256 * 128 * loaders._BYTES_PER_PIXEL
    monkeypatch.setattr(loaders, "available_memory", lambda: needed)
    loaders.check_batch_fits(64, 256, 128, "x")  # exactly enough
    with pytest.raises(ValueError, match="needs at least"):
        loaders.check_batch_fits(65, 256, 128, "x")


def test_extraction_refuses_a_batch_that_cannot_fit(checkpoint):
    from pmm_model.apps.extract import FeatureExtractor

    with pytest.raises(ValueError, match=r"^extraction: a batch of 1000000 images"):
        FeatureExtractor(checkpoint, device="cpu", batch_size=10**6)


@pytest.mark.slow
def test_an_address_space_limit_counts_as_the_memory_there_is(tmp_path):
    code = (
        "import resource\n"
        "resource.setrlimit(resource.RLIMIT_AS, (2**40, 2**40))\n"
        "from pmm_model.data.loaders import available_memory\n"
        "print(available_memory() <= 2**40)\n"
    )
    assert _python(code).stdout.strip() == "True"


def test_a_list_file_follows_the_same_rule_as_a_folder(tmp_path, checkpoint):
    from pmm_model.apps.extract import FeatureExtractor

    folder = _odd_tree(tmp_path / "imgs")
    (folder / "list.txt").write_text("0001_c1s1_01.jpg\nfifo.jpg\ndir.jpg\n")
    out = FeatureExtractor(checkpoint, device="cpu", progress=False).extract(folder / "list.txt")
    assert out.names == ["0001_c1s1_01.jpg"] and out.skipped == ["fifo.jpg", "dir.jpg"]
    (folder / "list.txt").write_text("0001_c1s1_01.jpg\nnowhere.jpg\n")
    with pytest.raises(FileNotFoundError, match="1 files do not exist"):
        FeatureExtractor(checkpoint, device="cpu").extract(folder / "list.txt")


# ---- issue 16 item 7: the evaluation protocol is checked when the data is loaded -----------------


def _tree(root, layout):
    for split, items in layout.items():
        (root / split).mkdir(parents=True)
        for i, (pid, cam) in enumerate(items):
            Image.new("RGB", (8, 16), (40 * pid, 0, 0)).save(
                root / split / f"{pid:04d}_c{cam}s1_{i:06d}_01.jpg"
            )
    return root


TRAIN = [(1, 1), (1, 2), (2, 1), (2, 2)]


@pytest.mark.parametrize(
    "query, gallery, counts",
    [
        ([(3, 1)], [(3, 1), (4, 2)], "1 have matches from their own camera only and 0"),
        ([(5, 1)], [(3, 1), (4, 2)], "0 have matches from their own camera only and 1"),
    ],
)
def test_no_valid_gallery_match_fails_when_loading(tmp_path, query, gallery, counts, capsys):
    root = _tree(
        tmp_path, {"bounding_box_train": TRAIN, "query": query, "bounding_box_test": gallery}
    )
    with pytest.raises(ValueError, match=f"no query has a valid gallery match.*{counts}"):
        build_dataset("folder", root)
    with pytest.raises(SystemExit) as stop:
        evaluate_cli.main(["--checkpoint", "c.pt", "--data", "folder", "--root", str(root)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "no query has a valid gallery match" in err


def test_queries_without_a_match_are_named_in_a_warning(caplog):
    query = [Record("q1", 3, 0), Record("q2", 5, 0)]
    with caplog.at_level(logging.WARNING):
        check_protocol(query, [Record("g", 3, 1)], "toy")
    assert "1 of 2 queries have no valid gallery match" in caplog.text


# ---- issue 16 item 8: bad images are found before training, named with the flag ----------------


@pytest.mark.slow
def test_a_corrupt_train_image_stops_before_training(tree, tmp_path, monkeypatch):
    root = tmp_path / "data"
    shutil.copytree(tree, root)
    bad = sorted((root / "bounding_box_train").glob("*.jpg"))[2]
    bad.write_bytes(b"not a jpeg")
    steps = []
    monkeypatch.setattr(Engine, "forward_loss", lambda self, *a: steps.append(1))
    code, err = run_train(tiny_run_argv(root, tmp_path / "run"))
    line = last_line(err)
    assert code == 1 and f"cannot read image {bad}" in line and "--skip-bad-images" in line
    assert steps == [] and "Traceback" not in err


@pytest.mark.slow
def test_an_image_corrupt_past_its_header_stops_with_its_name_in_the_log(tree, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tree, root)
    for path in (root / "bounding_box_train").glob("*.jpg"):  # whichever the first step reads
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
    assert image_problem(str(path)) is None  # the header check lets it through
    out = tmp_path / "run"
    code, err = run_train(tiny_run_argv(root, out))
    line = last_line(err)
    assert code == 1 and "cannot read image" in line and "--skip-bad-images" in line
    assert "Traceback" not in err
    log = (out / "train.log").read_text()
    assert "the run stopped: cannot read image" in log and "--skip-bad-images" in log


def test_a_worker_s_unreadable_image_error_is_one_line(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (128, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "a.jpg")
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "a.jpg").write_bytes(data[: len(data) * 2 // 3])
    loader = DataLoader(ImageDataset([(str(tmp_path / "a.jpg"), 0, 0)]), num_workers=1)
    with pytest.raises(UnreadableImageError) as error:
        next(iter(loader))
    assert str(error.value).startswith(f"cannot read image {tmp_path / 'a.jpg'}")
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_image_check_names_every_bad_file(tmp_path):
    Image.new("RGB", (8, 16)).save(tmp_path / "good.jpg")
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / name).write_bytes(b"")
    records = [(str(tmp_path / n), 0, 0) for n in ("good.jpg", "a.jpg", "b.jpg")]
    with pytest.raises(UnreadableImageError, match=r"a\.jpg .*, nor .*b\.jpg .*--skip-bad-images"):
        ImageDataset(records)


# ---- issue 16 item 11: bombs, 16-bit images, FIFOs -----------------------------------------------


def _bomb(path):
    """A valid small JPEG whose header claims 15000 x 15000 pixels."""
    Image.new("L", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = (15000).to_bytes(2, "big") * 2
    path.write_bytes(bytes(data))


def test_a_decompression_bomb_is_named_and_skipped(tmp_path, caplog):
    Image.new("RGB", (8, 16)).save(tmp_path / "good.jpg")
    _bomb(tmp_path / "bomb.jpg")
    records = [(str(tmp_path / n), 0, 0) for n in ("good.jpg", "bomb.jpg")]
    with pytest.raises(UnreadableImageError, match=r"bomb\.jpg \(too large to decode safely"):
        ImageDataset(records)
    with caplog.at_level(logging.WARNING):
        dataset = ImageDataset(records, skip_bad=True)
    assert dataset.num_skipped == 1 and "bomb.jpg" in caplog.text


def test_16_bit_grayscale_is_scaled_to_8_bits(tmp_path):
    values = np.array([[0, 256 * 128], [65535, 256 * 64]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    decoded = np.asarray(read_image(str(tmp_path / "deep.png")))
    assert decoded.shape == (2, 2, 3)
    assert decoded[..., 0].tolist() == [[0, 128], [255, 64]]
    image, _, _ = ImageDataset([(str(tmp_path / "deep.png"), 0, 0)])[0]
    assert np.asarray(image)[0, 1].tolist() == [128, 128, 128]


def test_a_fifo_in_the_gallery_is_left_out_not_waited_on(tmp_path, caplog):
    Image.new("RGB", (8, 16)).save(tmp_path / "good.jpg")
    fifo = tmp_path / "0002_c1s1_000001_01.jpg"
    os.mkfifo(fifo)
    records = [(str(tmp_path / "good.jpg"), 0, 0), (str(fifo), 0, 0)]
    built = []
    with caplog.at_level(logging.WARNING):
        worker = threading.Thread(target=lambda: built.append(ImageDataset(records)), daemon=True)
        worker.start()
        worker.join(60)
    if worker.is_alive():  # the reader blocks on the FIFO: release it, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("ImageDataset blocked on a FIFO")
    assert [r.img_path for r in built[0].records] == [str(tmp_path / "good.jpg")]
    assert f"skipped 1 paths that are not regular files: {fifo}" in caplog.text
