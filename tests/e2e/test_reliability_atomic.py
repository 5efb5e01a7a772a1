"""Output files: every file a command writes is written atomically and checked before the work.

A file-size limit (``ulimit -f``: EFBIG, with SIGXFSZ ignored as Python does) reached while
writing over a good file leaves the good file, no temporary file, and one line naming it (issue
25 item 2). Outputs are checked for writing before any work, and a full disk is named with the
size and how to resume (issue 16 item 9).
"""

import errno
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from oracles.runs import (
    last_line,
    load_checkpoint_raw,
    run_train,
    tiny_run_argv,
)

import pmm_model.cli.evaluate as evaluate_cli
import pmm_model.cli.study as study_cli
import pmm_model.run.atomic as atomic
from pmm_model.cli.args import writable_output
from pmm_model.run.atomic import atomic_write
from pmm_model.run.checkpoint import load_checkpoint, save_checkpoint
from pmm_model.run.folder import LogFile

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


# ---- issue 16 item 9: outputs are checked for writing before the work ----------------------------


@pytest.mark.parametrize("case", ["folder", "under a file", "read-only"])
def test_evaluate_output_is_checked_before_evaluating(tmp_path, monkeypatch, capsys, case):
    (tmp_path / "a_file").write_text("")
    output = {
        "folder": tmp_path,
        "under a file": tmp_path / "a_file" / "eval.json",
        "read-only": "/sys/eval.json",  # sysfs refuses new files, even to root
    }[case]
    loaded = []
    monkeypatch.setattr(evaluate_cli, "load_model_for_eval", loaded.append)
    with pytest.raises(SystemExit) as stop:
        evaluate_cli.main(["--checkpoint", "c.pt", "--data", "synthetic", "--output", str(output)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and loaded == []
    assert f"argument --output: cannot write '{output}'" in err


def test_writable_output(tmp_path):
    assert writable_output(tmp_path / "new" / "deeper" / "x.json") == tmp_path / "new/deeper/x.json"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    assert writable_output(tmp_path, folder=True) == tmp_path
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="it is a file"):
        writable_output(tmp_path / "f", folder=True)
    with pytest.raises(ValueError, match="it is a folder"):
        writable_output(tmp_path)


# ---- issue 16 item 9: a full disk is named, with the size and how to resume ----------------------


class _FullDisk:
    """A file whose writes fail as on a full disk."""

    def __init__(self, file):
        self.file = file

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")


def _fill_disk_at_write(monkeypatch, n):
    """From the ``n``-th atomic write on (1-based), the disk is full."""
    calls = []

    def fake_open(path, mode="r", *args, **kwargs):
        file = open(path, mode, *args, **kwargs)  # noqa: SIM115 (returned open)
        if mode != "wb":
            return file
        calls.append(1)
        return _FullDisk(file) if len(calls) >= n else file

    monkeypatch.setattr(atomic, "open", fake_open, raising=False)


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_how_much(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1})
    _fill_disk_at_write(monkeypatch, 1)
    with pytest.raises(OSError) as error:
        save_checkpoint(path, {"epoch": 2, "weights": torch.zeros(2**19)})  # 2 MB
    message = str(error.value)
    assert error.value.errno == errno.ENOSPC
    assert f"no space left on the device of {tmp_path} to write checkpoint.pt" in message
    assert "needed about 2 MB" in message and "the previous checkpoint.pt is kept" in message
    monkeypatch.undo()
    assert load_checkpoint_raw(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


@pytest.mark.slow
def test_a_full_disk_during_training_says_how_to_resume(tree, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _fill_disk_at_write(monkeypatch, 2)  # the checkpoint of epoch 2
    code, err = run_train(tiny_run_argv(tree, out, "--epochs", "2", "--eval-every", "2"))
    line = last_line(err)
    assert code == 1 and "Traceback" not in err
    assert line.startswith("python -m pmm_model.train: error: no space left on the device of")
    assert "needed about" in line and f"continue with --resume {out / 'checkpoint.pt'}" in line
    monkeypatch.undo()
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
    assert "the run stopped: [Errno 28] no space left" in (out / "train.log").read_text()


class _FullDiskStream:
    """A log file's stream on a full disk."""

    def write(self, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self):
        pass

    def close(self):
        pass


def test_a_full_disk_under_the_log_is_one_warning_not_a_traceback_per_record(tmp_path, capsys):
    # logging's FileHandler printed "--- Logging error ---" and a traceback for every record.
    handler = LogFile(tmp_path / "train.log")
    handler.stream = _FullDiskStream()
    log = logging.getLogger("pmm_model.test_full_disk")
    log.addHandler(handler)
    try:
        log.warning("one")
        log.warning("two")
    finally:
        log.removeHandler(handler)
        handler.close()
    assert capsys.readouterr().err == (
        f"warning: cannot write {tmp_path / 'train.log'} (No space left on device); "
        "logging to stdout only\n"
    )


def test_study_out_is_checked_before_the_grid(tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(SystemExit) as stop:
        study_cli.build_parser().parse_args(["--out", str(tmp_path / "a_file")])
    assert stop.value.code == 2
    assert "argument --out: cannot use" in capsys.readouterr().err
