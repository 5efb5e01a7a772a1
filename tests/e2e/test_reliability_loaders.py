"""Issue 25 items 1 and 9: loader workers never outlive a failure; one rule for odd files.

The hang is a process-exit property, so the cases run in a subprocess under a timeout.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from oracles import tiny_synthetic_set
from PIL import Image

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


# ---- item 9: extraction follows the dataset loaders' rules -------------------------------


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


# ---- item 3: a batch that cannot fit is refused before any image is read ----------------


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
