"""Issue 25 item 2: every file a command writes is written atomically.

A file-size limit (``ulimit -f``: EFBIG, with SIGXFSZ ignored as Python does) reached while
writing over a good file leaves the good file, no temporary file, and one line naming it.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pmm_model.run.atomic import atomic_write

ROOT = Path(__file__).resolve().parents[2]

# Each writer writes far more than the 4 KB limit over an existing good file.
WRITERS = {
    "features.npz": """
        import torch
        from pmm_model.apps.extract import ExtractedFeatures
        ExtractedFeatures(torch.ones(100, 64), [str(i) for i in range(100)]).save(path)
    """,
    "mixing.png": """
        import numpy as np
        from matplotlib.figure import Figure
        from pmm_model.apps.panels import save_figure
        fig = Figure(figsize=(4, 4))
        fig.add_subplot().imshow(np.random.default_rng(0).random((200, 200)))
        save_figure(fig, path)
    """,
    "metrics.json": """
        from pmm_model.run.atomic import atomic_write
        atomic_write(path, lambda f: f.write(b"[" + b"0," * 10000 + b"0]"))
    """,
    "checkpoint.pt": """
        import torch
        from pmm_model.run.checkpoint import save_checkpoint
        save_checkpoint(path, {"model": {"w": torch.ones(10000)}})
    """,
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(WRITERS))
def test_a_file_size_limit_keeps_the_previous_file_and_names_it(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"the previous, good file")
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        f"path = {str(path)!r}\n"
        "try:\n"
        + textwrap.indent(textwrap.dedent(WRITERS[name]), "    ")
        + "except OSError as err:\n"
        "    print(err.strerror, file=sys.stderr)\n"
        "    sys.exit(1)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.strip() == (
        f"cannot write {path}: the file-size limit was reached (ulimit -f); "
        f"the previous {name} is kept"
    )
    assert path.read_bytes() == b"the previous, good file"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_an_interrupted_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("old")

    def write(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, write)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_written_file_has_the_umask_s_permissions_not_a_temp_file_s(tmp_path):
    atomic_write(tmp_path / "a.json", lambda f: f.write(b"{}"))
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~mask
