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


@pytest.mark.parametrize(
    ("workers", "ending"), [(1, "exit in handler"), (3, "traceback"), (2, "kept error")]
)
def test_a_worker_s_error_ends_the_process_with_its_workers(tmp_path, workers, ending):
    _truncated_jpg(tmp_path / "a.jpg")
    code = (
        "import sys\n"
        "from pmm_model.data.datasets import ImageDataset\n"
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
