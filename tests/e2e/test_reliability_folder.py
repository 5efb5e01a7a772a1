"""Issue 25 item 4: everything a run folder holds belongs to one run.

``--overwrite`` moves aside whatever the old run's folder holds (its pictures, an extracted
``gallery.npz``, an exported ``model.onnx``, not only the run files), and a start that fails
puts all of it back.
"""

import pytest

from pmm_model.run.folder import RunFolder, RunFolderError

# What an old run's folder may hold besides its run files: any name, files and folders.
OLD_RUN = {
    "checkpoint.pt": "old",
    "metrics.json": "old",
    "train.log": "old",
    "gallery.npz": "old",
    "model.onnx": "old",
    "model.onnx.rejected": "old",
    "pictures/mixing.png": "old",
    "notes with spaces.txt": "old",
}


def _old_run(folder):
    for name, text in OLD_RUN.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def _files(folder):
    return sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != ".lock"
    )


def test_overwrite_moves_aside_everything_the_old_run_holds(tmp_path):
    folder = _old_run(tmp_path / "run")
    with RunFolder(folder, overwrite=True) as run:
        run.started()
        run.checkpoint_path.write_text("new")
    assert _files(folder) == ["checkpoint.pt", "train.log"]


def test_a_failed_overwrite_puts_everything_back(tmp_path):
    folder = _old_run(tmp_path / "run")
    with pytest.raises(RuntimeError), RunFolder(folder, overwrite=True):
        raise RuntimeError("the data did not load")
    assert _files(folder) == sorted(OLD_RUN)
    assert all((folder / name).read_text() == "old" for name in OLD_RUN)


def test_leftovers_without_a_run_keep_other_files(tmp_path):
    # No checkpoint: not a run, so only the run files of a killed start are replaced.
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "train.log").write_text("old")
    (folder / "gallery.npz").write_text("mine")
    with RunFolder(folder) as run:
        run.started()
    assert (folder / "gallery.npz").read_text() == "mine"


def test_without_overwrite_a_run_is_refused(tmp_path):
    folder = _old_run(tmp_path / "run")
    with pytest.raises(RunFolderError, match="holds another run"), RunFolder(folder):
        pass
    assert _files(folder) == sorted(OLD_RUN)
