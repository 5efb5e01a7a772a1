"""Run folders: a run is only ever replaced, resumed or written back by its own command.

``--overwrite`` moves aside whatever the old run's folder holds (its pictures, an extracted
``gallery.npz``, an exported ``model.onnx``, not only the run files) and a start that fails puts
all of it back (issue 25 item 4); a resume writes back only into its own run; a folder without a
checkpoint is not a run; failed starts leave nothing (issue 16 items 1, 2, 13).
"""

import logging
import shutil

import pytest
from oracles.runs import (
    RUN_FILES,
    fake_run,
    last_line,
    run_train,
    snapshot,
    tiny_run_argv,
)

from pmm_model.cli import train
from pmm_model.run.checkpoint import load_checkpoint
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


# ---- issue 16 item 1: --overwrite replaces a run only once the new one has started -------------


@pytest.mark.slow
def test_overwrite_with_a_bad_root_keeps_the_old_run(tree, finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = snapshot(run)
    code, err = run_train(tiny_run_argv(tmp_path / "typo", run, "--overwrite"))
    assert code == 1 and "no folder holding" in last_line(err)
    assert snapshot(run) == before
    assert sorted(p.name for p in run.iterdir()) == sorted([".lock", *RUN_FILES, "tensorboard"])


def test_a_failed_overwrite_start_restores_the_old_run(tmp_path):
    run = fake_run(tmp_path / "run")
    with pytest.raises(ValueError, match="bad data"), RunFolder(run, overwrite=True):
        assert not (run / "checkpoint.pt").exists()  # moved aside while the start runs
        logging.getLogger("pmm_model.test").info("a line of the failed start")
        raise ValueError("bad data")
    assert {n: (run / n).read_text() for n in RUN_FILES} == dict.fromkeys(RUN_FILES, "an older run")
    with RunFolder(run, overwrite=True) as folder:
        folder.started()  # now the old run goes
        assert not (run / "checkpoint.pt").exists() and not (run / ".previous-run").exists()
    assert "an older run" not in (run / "train.log").read_text()


def test_a_start_killed_while_overwriting_is_rolled_back_by_the_next(tmp_path):
    # What SIGKILL between moving the old run aside and starting leaves behind.
    run = fake_run(tmp_path / "run" / ".previous-run").parent
    (run / "train.log").write_text("the killed start's log")
    with pytest.raises(RunFolderError, match="holds another run"), RunFolder(run):
        pass
    assert {n: (run / n).read_text() for n in RUN_FILES} == dict.fromkeys(RUN_FILES, "an older run")
    assert not (run / ".previous-run").exists()


# ---- issue 16 item 2: a resume writes back only into its own run --------------------------------


def test_resume_of_another_checkpoint_never_replaces_a_run(tmp_path):
    run = fake_run(tmp_path / "run")
    copy = run / "checkpoint_copy.pt"
    copy.write_text("an older checkpoint")
    with pytest.raises(RunFolderError) as error, RunFolder(run, resume_from=copy):
        pass
    message = str(error.value)
    assert "checkpoint_copy.pt is not the checkpoint of the run in output folder" in message
    assert "new output_dir" in message and "overwrite=True" in message  # the library's words
    assert {n: (run / n).read_text() for n in RUN_FILES} == dict.fromkeys(RUN_FILES, "an older run")
    with RunFolder(run, resume_from=run / "checkpoint.pt") as folder:  # its own: continues
        assert folder.resuming
        folder.started()
    with RunFolder(tmp_path / "new", resume_from=copy) as folder:  # a new folder: fine
        assert not folder.resuming
        folder.started()


@pytest.mark.slow
def test_resume_of_a_copied_checkpoint_in_a_finished_run_is_refused(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    shutil.copy(run / "checkpoint.pt", run / "checkpoint_copy.pt")
    before = snapshot(run)
    code, err = run_train(["--resume", str(run / "checkpoint_copy.pt"), "--epochs", "2"])
    assert code == 1 and "is not the checkpoint of the run in output folder" in last_line(err)
    assert snapshot(run) == before
    new = tmp_path / "continued"
    argv = ["--resume", str(run / "checkpoint_copy.pt"), "--epochs", "2", "--output-dir", str(new)]
    assert run_train(argv)[0] == 0
    assert load_checkpoint(new / "checkpoint.pt")["epoch"] == 2
    assert snapshot(run) == before


# ---- issue 16 item 13: a folder without a checkpoint is not a run; failed starts leave nothing ---


def test_a_folder_without_a_checkpoint_is_not_a_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.log").write_text("a run killed before its first checkpoint\n")
    with RunFolder(run) as folder:  # the same command works again
        folder.started()
    assert "killed before" not in (run / "train.log").read_text()


def test_a_failed_start_leaves_no_folder(tmp_path):
    out = tmp_path / "a" / "b" / "run"
    with pytest.raises(ValueError), RunFolder(out):
        raise ValueError("bad option found late")
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["--ids-per-batch", "10"], ["--root", "/no/such/tree"]])
def test_a_refused_start_creates_no_folder_and_the_fixed_command_runs(tree, tmp_path, extra):
    out = tmp_path / "run"
    code, err = run_train([*tiny_run_argv(tree, out), *extra])
    assert code == 1 and "Traceback" not in err
    assert not out.exists()


def test_overwrite_with_a_resume_of_the_folder_s_own_run_is_refused(finished, tmp_path):
    # Issue 25 item 5: --overwrite has nothing to replace there, so it is refused, not ignored.
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    checkpoint = run / "checkpoint.pt"
    before = snapshot(run)
    code, err = run_train(["--resume", str(checkpoint), "--overwrite", "--epochs", "2"])
    assert code == 2 and "Traceback" not in err
    assert "argument --overwrite: --resume continues the run of its own folder" in last_line(err)
    assert snapshot(run) == before
    # Into another folder holding a run, --overwrite is what replaces it: accepted.
    other = fake_run(tmp_path / "other")
    argv = ["--resume", str(checkpoint), "--overwrite", "--output-dir", str(other)]
    assert train.parse_args([*argv, "--epochs", "2"]).overwrite
