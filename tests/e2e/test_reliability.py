"""Issue 16: never lose a run, never fail late. Run folders, data checks and output checks.

End-to-end cases use the issue's tiny run ``T`` (demo preset at 64x32, P=2, K=2, a 4-identity
folder tree) and are marked ``slow``; the rest exercise the parts directly.
"""

import contextlib
import dataclasses
import errno
import io
import json
import logging
import os
import shutil
import threading

import numpy as np
import pytest
import torch
from oracles import tiny_synthetic_set
from PIL import Image
from torch.utils.data import DataLoader

import pmm_model.cli.evaluate as evaluate_cli
import pmm_model.cli.study as study_cli
import pmm_model.cli.visualize as visualize_cli
import pmm_model.run.atomic as atomic
from pmm_model.cli import train
from pmm_model.cli.args import writable_output
from pmm_model.data.datasets import Record, build_dataset, check_protocol
from pmm_model.data.images import ImageDataset, UnreadableImageError, image_problem, read_image
from pmm_model.nets.models import build_model
from pmm_model.run.checkpoint import load_checkpoint, save_checkpoint
from pmm_model.run.config import make_config
from pmm_model.run.engine import Engine
from pmm_model.run.folder import LogFile, RunFolder, RunFolderError

RUN_FILES = ("checkpoint.pt", "metrics.json", "train.log")


def load_checkpoint_raw(path):
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """4 training identities x 2 cameras, 2 test identities: ``T``'s folder tree."""
    return tiny_synthetic_set(
        tmp_path_factory.mktemp("data"),
        num_train_ids=4,
        num_test_ids=2,
        images_per_id_per_camera=1,
        num_distractors=1,
    )


def T(root, out, *extra):
    """The issue's tiny run, one epoch, evaluated at its end."""
    return [
        "--preset", "demo", "--data", "folder", "--root", str(root), "--height", "64",
        "--width", "32", "--ids-per-batch", "2", "--images-per-id", "2", "--feature-dim", "32",
        "--workers", "0", "--epochs", "1", "--eval-every", "1", "--device", "cpu",
        "--output-dir", str(out), *extra,
    ]  # fmt: skip


def _run(argv):
    """``(exit status, stderr)`` of the train CLI (0 when it returns)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            train.main(argv)
            code = 0
        except SystemExit as stop:
            code = stop.code
    return code, err.getvalue()


def _last_line(err):
    return err.strip().splitlines()[-1]


def _snapshot(folder):
    return {name: (folder / name).read_bytes() for name in RUN_FILES}


@pytest.fixture(scope="module")
def finished(tree, tmp_path_factory):
    """A finished run of ``T``: its folder."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert _run(T(tree, out))[0] == 0
    return out


def _fake_run(folder, text="an older run"):
    folder.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        (folder / name).write_text(text)
    return folder


# ---- item 1: --overwrite replaces a run only once the new one has started -------------


@pytest.mark.slow
def test_overwrite_with_a_bad_root_keeps_the_old_run(tree, finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = _snapshot(run)
    code, err = _run(T(tmp_path / "typo", run, "--overwrite"))
    assert code == 1 and "no folder holding" in _last_line(err)
    assert _snapshot(run) == before
    assert sorted(p.name for p in run.iterdir()) == sorted([".lock", *RUN_FILES, "tensorboard"])


def test_a_failed_overwrite_start_restores_the_old_run(tmp_path):
    run = _fake_run(tmp_path / "run")
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
    run = _fake_run(tmp_path / "run" / ".previous-run").parent
    (run / "train.log").write_text("the killed start's log")
    with pytest.raises(RunFolderError, match="holds another run"), RunFolder(run):
        pass
    assert {n: (run / n).read_text() for n in RUN_FILES} == dict.fromkeys(RUN_FILES, "an older run")
    assert not (run / ".previous-run").exists()


# ---- item 2: a resume writes back only into its own run --------------------------------


def test_resume_of_another_checkpoint_never_replaces_a_run(tmp_path):
    run = _fake_run(tmp_path / "run")
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
    before = _snapshot(run)
    code, err = _run(["--resume", str(run / "checkpoint_copy.pt"), "--epochs", "2"])
    assert code == 1 and "is not the checkpoint of the run in output folder" in _last_line(err)
    assert _snapshot(run) == before
    new = tmp_path / "continued"
    argv = ["--resume", str(run / "checkpoint_copy.pt"), "--epochs", "2", "--output-dir", str(new)]
    assert _run(argv)[0] == 0
    assert load_checkpoint(new / "checkpoint.pt")["epoch"] == 2
    assert _snapshot(run) == before


# ---- item 13: a folder without a checkpoint is not a run; failed starts leave nothing ----


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
    code, err = _run([*T(tree, out), *extra])
    assert code == 1 and "Traceback" not in err
    assert not out.exists()


# ---- item 7: the evaluation protocol is checked when the data is loaded ------------------


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


# ---- item 8: bad images are found before training, named with the flag ----------------


@pytest.mark.slow
def test_a_corrupt_train_image_stops_before_training(tree, tmp_path, monkeypatch):
    root = tmp_path / "data"
    shutil.copytree(tree, root)
    bad = sorted((root / "bounding_box_train").glob("*.jpg"))[2]
    bad.write_bytes(b"not a jpeg")
    steps = []
    monkeypatch.setattr(Engine, "forward_loss", lambda self, *a: steps.append(1))
    code, err = _run(T(root, tmp_path / "run"))
    line = _last_line(err)
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
    code, err = _run(T(root, out))
    line = _last_line(err)
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


# ---- item 11: bombs, 16-bit images, FIFOs -----------------------------------------------


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


# ---- item 9: outputs are checked for writing before the work ------------------------------


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


# ---- item 9: a full disk is named, with the size and how to resume --------------------------


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
    code, err = _run(T(tree, out, "--epochs", "2", "--eval-every", "2"))
    line = _last_line(err)
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


# ---- item 10: checkpoints that load but do not fit --------------------------------------------


def _spoil(checkpoint, case):
    args, model = checkpoint["args"], checkpoint["model"]
    if case == "other backbone":
        args["backbone"] = "resnet34"
    elif case == "missing weights":
        del model[next(iter(model))]
    elif case == "other class count":
        args["num_classes"] = 7
    elif case == "string height":
        args["height"] = "64"
    elif case == "unknown model":
        args["model"] = "bdb"
    elif case == "nan weights":
        next(t for t in model.values() if t.is_floating_point()).fill_(float("nan"))
    elif case == "no optimizer":
        del checkpoint["optimizer"]
    elif case == "no rng":
        del checkpoint["rng"]
    elif case == "negative batches":
        checkpoint["batches"] = -3
    return checkpoint


MESSAGES = {
    "other backbone": "its weights do not fit the network its args describe",
    "missing weights": "1 weights missing",
    "other class count": "of another shape",  # resume: the data's count is checked first
    "string height": "its args do not describe a run: height: must be an integer",
    "unknown model": "its args do not describe a run: model: must be one of",
    "nan weights": "hold NaN or infinite values",
    "no optimizer": "cannot be resumed: it lacks ['optimizer']",
    "no rng": "cannot be resumed: it lacks ['rng']",
    "negative batches": "its batches counter must be an integer >= 0, got -3",
}
FOR_EVALUATION = ("other backbone", "missing weights", "other class count", "string height")
FOR_EVALUATION += ("unknown model", "nan weights")


def _spoiled(finished, tmp_path, case):
    path = tmp_path / "spoiled" / "checkpoint.pt"
    path.parent.mkdir()
    torch.save(_spoil(load_checkpoint_raw(finished / "checkpoint.pt"), case), path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("case", FOR_EVALUATION)
def test_evaluate_refuses_a_checkpoint_that_does_not_fit(tree, finished, tmp_path, case, capsys):
    path = _spoiled(finished, tmp_path, case)
    argv = ["--checkpoint", str(path), "--data", "folder", "--root", str(tree), "--workers", "0"]
    with pytest.raises(SystemExit) as stop:
        evaluate_cli.main([*argv, "--device", "cpu"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"checkpoint '{path}'" in err and MESSAGES[case] in err


@pytest.mark.slow
@pytest.mark.parametrize("case", list(MESSAGES))
def test_resume_refuses_a_checkpoint_that_does_not_fit(finished, tmp_path, case):
    path = _spoiled(finished, tmp_path, case)
    before = path.read_bytes()
    code, err = _run(["--resume", str(path), "--epochs", "2"])
    assert code in (1, 2) and "Traceback" not in err
    expected = "was trained on 7 identities" if case == "other class count" else MESSAGES[case]
    assert f"checkpoint '{path}'" in _last_line(err) and expected in _last_line(err)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pt"]


@pytest.mark.slow
def test_resume_refuses_an_absurd_batch_counter(finished, tmp_path):
    path = _spoiled(finished, tmp_path, "none")
    spoiled = load_checkpoint_raw(path)
    spoiled["batches"] = 10**9
    torch.save(spoiled, path)
    code, err = _run(["--resume", str(path), "--epochs", "2"])
    assert code == 1 and "its batch counter is beyond the 2 global batches" in _last_line(err)


# ---- item 12: visualize checks everything before drawing ----------------------------------


@pytest.fixture(scope="module")
def pmm_checkpoint(tmp_path_factory):
    """An untrained PMM checkpoint of ``T``'s configuration (4 classes), with metrics.json."""
    config = make_config(
        {
            "data": "folder",
            "height": 64,
            "width": 32,
            "ids_per_batch": 2,
            "images_per_id": 2,
            "feature_dim": 32,
        },
        preset="demo",
    )
    config = dataclasses.replace(config, num_classes=4)
    torch.manual_seed(0)
    model = build_model("pmm", 4, **config.model_options())
    path = tmp_path_factory.mktemp("pmm") / "checkpoint.pt"
    save_checkpoint(path, {"model": model.state_dict(), "args": config.to_dict()})
    metrics = [{"epoch": 1, "rank1": 0.5, "mAP": 0.4, "mINP": 0.2}]
    (path.parent / "metrics.json").write_text(json.dumps(metrics))
    return path


def _visualize(checkpoint, root, out, *extra):
    argv = ["--checkpoint", str(checkpoint), "--data", "folder", "--root", str(root)]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            visualize_cli.main([*argv, "--out", str(out), "--device", "cpu", *extra])
            code = 0
        except SystemExit as stop:
            code = stop.code
    return code, err.getvalue()


@pytest.mark.slow
def test_visualize_draws_with_a_fitting_checkpoint(pmm_checkpoint, tree, tmp_path):
    assert _visualize(pmm_checkpoint, tree, tmp_path / "out", "--ids", "2")[0] == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "curves.png",
        "mixing.png",
        "ranked.png",
    ]


@pytest.fixture(scope="module")
def six_ids(tmp_path_factory):
    return tiny_synthetic_set(
        tmp_path_factory.mktemp("six"),
        num_test_ids=2,
        images_per_id_per_camera=1,
        num_distractors=1,
    )


@pytest.mark.parametrize(
    "case, message",
    [
        ("other data", "the network was trained on 4 identities, but 'folder' has 6"),
        ("per id", "per_id 5: fewer than 2 training identities have 5 images"),
        ("corrupt query", "cannot read image"),
        ("bad json", "is not JSON"),
        ("metrics of another kind", "metrics[0] lacks ['epoch', 'rank1', 'mAP', 'mINP']"),
        ("missing metrics", "argument --metrics: no such file"),
        ("nan weights", "hold NaN or infinite values"),
    ],
)
def test_visualize_refuses_up_front(pmm_checkpoint, tree, six_ids, tmp_path, case, message):
    root, checkpoint, extra = tree, pmm_checkpoint, []
    if case == "other data":
        root = six_ids
    elif case == "per id":
        extra = ["--per-id", "5"]
    elif case == "corrupt query":
        root = tmp_path / "data"
        shutil.copytree(tree, root)
        sorted((root / "query").glob("*.jpg"))[0].write_bytes(b"not a jpeg")
    elif case in ("bad json", "metrics of another kind", "missing metrics"):
        metrics = tmp_path / "metrics.json"
        if case != "missing metrics":
            metrics.write_text("{oops" if case == "bad json" else '[{"loss": 1}]')
        extra = ["--metrics", str(metrics)]
    elif case == "nan weights":
        checkpoint = tmp_path / "nan.pt"
        spoiled = _spoil(load_checkpoint_raw(pmm_checkpoint), "nan weights")
        torch.save(spoiled, checkpoint)
    out = tmp_path / "out"
    code, err = _visualize(checkpoint, root, out, *extra)
    assert code == 2 and message in _last_line(err) and "Traceback" not in err
    assert not out.exists() or not list(out.iterdir())  # nothing drawn


@pytest.mark.slow
def test_visualize_may_skip_a_corrupt_query_image(pmm_checkpoint, tree, tmp_path, caplog):
    root = tmp_path / "data"
    shutil.copytree(tree, root)
    (root / "query" / "0005_c2s1_000099_01.jpg").write_bytes(b"not a jpeg")  # a 3rd query
    with caplog.at_level(logging.WARNING):
        code, _ = _visualize(pmm_checkpoint, root, tmp_path / "out", "--skip-bad-images")
    assert code == 0 and "skipped 1 unreadable images" in caplog.text
    assert (tmp_path / "out" / "ranked.png").is_file()


@pytest.mark.slow
def test_visualize_says_when_there_are_no_curves(pmm_checkpoint, tree, tmp_path, capsys):
    lone = tmp_path / "lone" / "checkpoint.pt"
    lone.parent.mkdir()
    shutil.copy(pmm_checkpoint, lone)
    assert _visualize(lone, tree, tmp_path / "out")[0] == 0
    assert f"curves: skipped, no --metrics and no {lone.parent / 'metrics.json'}" in (
        capsys.readouterr().out
    )


# ---- issue 25: the hostile checkpoint matrix through visualize and export ----------------

HOSTILE = (*FOR_EVALUATION, "truncated", "a text file", "not a dict", "empty")


def _hostile(finished, tmp_path, case):
    if case in FOR_EVALUATION:
        return _spoiled(finished, tmp_path, case)
    path = tmp_path / "hostile" / "checkpoint.pt"
    path.parent.mkdir()
    data = (finished / "checkpoint.pt").read_bytes()
    if case == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif case == "a text file":
        path.write_text("just some text\n")
    elif case == "not a dict":
        torch.save([1, 2, 3], path)
    else:
        path.write_bytes(b"")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("case", HOSTILE)
@pytest.mark.parametrize("command", ["visualize", "export"])
def test_visualize_and_export_refuse_a_hostile_checkpoint_in_one_line(
    tree, finished, tmp_path, case, command, capsys
):
    import pmm_model.cli.export as export_cli

    path = _hostile(finished, tmp_path, case)
    if command == "visualize":
        main, argv = visualize_cli.main, ["--data", "folder", "--root", str(tree)]
        argv += ["--out", str(tmp_path / "pics"), "--device", "cpu"]
    else:
        main, argv = export_cli.main, ["--out", str(tmp_path / "m.onnx")]
    with pytest.raises(SystemExit) as stop:
        main(["--checkpoint", str(path), *argv])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert str(path) in err and "Traceback" not in err
    if case in MESSAGES:
        assert MESSAGES[case] in err
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "pics").exists()
