"""The training CLI on a tiny synthetic set: outputs, exact resume, and every fault case.

Runs are tiny (resnet18 at 64x32, 6 ids, 3 steps of 8 images per epoch); the baseline network
serves where the fault handling, not PMM, is under test.
"""

import contextlib
import io
import json
import os
import runpy
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from oracles import tiny_synthetic_set
from torch.distributed.run import get_args_parser

from pmm_model.cli import train
from pmm_model.run.checkpoint import load_checkpoint, load_model
from pmm_model.run.engine import Engine, lr_factor
from pmm_model.run.folder import RunFolder


def _argv(root, out, *extra):
    # No --block-size: at 64x32 the default is 1x1, and the baseline runs would refuse it.
    return [
        "--data", "folder", "--root", str(root), "--output-dir", str(out),
        "--backbone", "resnet18", "--height", "64", "--width", "32", "--ids-per-batch", "2",
        "--images-per-id", "4", "--epochs", "2", "--eval-every", "1",
        "--workers", "0", "--device", "cpu", "--seed", "3", *extra,
    ]  # fmt: skip


def _exit_code(argv):
    with pytest.raises(SystemExit) as excinfo:
        train.main(argv)
    return excinfo.value.code


def _same_weights(a, b):
    assert a.keys() == b.keys()
    for name, tensor in b.items():
        assert torch.equal(a[name], tensor), name


@pytest.fixture(scope="module")
def straight(tiny_root, tmp_path_factory):
    """An uninterrupted 2-epoch PMM run: (final metrics, its folder)."""
    out = tmp_path_factory.mktemp("straight")
    return train.main(_argv(tiny_root, out)), out


def _calls_after(monkeypatch, method, n, action):
    """Patch ``Engine.<method>`` to run ``action(self)`` before its ``n``-th call (1-based)."""
    real = getattr(Engine, method)
    calls = []

    def patched(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            action(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Engine, method, patched)
    return calls


def test_lr_schedule_is_the_papers_scaled_to_the_epochs():
    paper = [lr_factor(e, 400) for e in range(400)]
    assert paper[:50] == [(e // 5 + 1) / 10 for e in range(50)]
    assert set(paper[50:200]) == {1.0} and set(paper[200:300]) == {0.1}
    assert set(paper[300:]) == {0.01}
    assert [lr_factor(e, 8) for e in range(8)] == [0.1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01]


@pytest.mark.slow
def test_resume_continues_exactly(tiny_root, straight, tmp_path, monkeypatch, capsys):
    def interrupt(self):
        raise KeyboardInterrupt("simulated hard interruption")

    _calls_after(monkeypatch, "_train_epoch", 2, interrupt)
    assert _exit_code(_argv(tiny_root, tmp_path)) == 130
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1

    resumed = train.main(["--resume", str(tmp_path / "checkpoint.pt")])
    metrics, straight_dir = straight
    assert {k: resumed[k] for k in ("rank1", "mAP", "mINP")} == {
        k: metrics[k] for k in ("rank1", "mAP", "mINP")
    }
    a = load_checkpoint(tmp_path / "checkpoint.pt")
    b = load_checkpoint(straight_dir / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 2
    _same_weights(a["model"], b["model"])
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert [m["epoch"] for m in saved] == [1, 2]
    assert set(saved[0]) == {"epoch", "rank1", "mAP", "mINP", "seconds_per_epoch"}
    assert "resumed from" in (tmp_path / "train.log").read_text()
    assert "rank-1: " in capsys.readouterr().out


@pytest.mark.slow
def test_sigterm_checkpoints_the_step_and_resume_is_exact_with_workers(
    tiny_root, straight, tmp_path, monkeypatch, capsys
):
    # Case 7: SIGTERM in the 2nd step of epoch 2 (the 5th step): finish it, checkpoint, exit.
    _calls_after(monkeypatch, "forward_loss", 5, lambda self: os.kill(os.getpid(), signal.SIGTERM))
    assert _exit_code(_argv(tiny_root, tmp_path)) == 128 + signal.SIGTERM
    monkeypatch.undo()
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert (checkpoint["epoch"], checkpoint["batches"]) == (1, 2)
    err = capsys.readouterr().err
    assert "stopped by SIGTERM after epoch 2, global batch 2" in err
    assert f"--resume {tmp_path / 'checkpoint.pt'}" in err
    assert "stopped by SIGTERM" in (tmp_path / "train.log").read_text()
    # The resumed run (now with 2 loader processes) finishes exactly as the straight one.
    train.main(["--resume", str(tmp_path / "checkpoint.pt"), "--workers", "2"])
    _same_weights(
        load_checkpoint(tmp_path / "checkpoint.pt")["model"],
        load_checkpoint(straight[1] / "checkpoint.pt")["model"],
    )


@pytest.mark.slow
def test_ctrl_c_during_a_checkpoint_write_completes_it(tiny_root, tmp_path, monkeypatch):
    # Case 7: SIGINT arriving while the checkpoint is written neither breaks the write nor
    # leaves a temporary file; the run then stops (status 130) with a loadable checkpoint.
    import pmm_model.run.checkpoint as checkpoints
    from pmm_model.run.atomic import atomic_write

    real_save = checkpoints.save_checkpoint

    def save_interrupted(path, checkpoint):
        def write_with_signal(f):
            os.kill(os.getpid(), signal.SIGINT)
            torch.save(checkpoint, f)

        atomic_write(path, write_with_signal)

    monkeypatch.setattr(checkpoints, "save_checkpoint", save_interrupted)
    assert _exit_code(_argv(tiny_root, tmp_path, "--model", "baseline")) == 130
    monkeypatch.setattr(checkpoints, "save_checkpoint", real_save)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow
def test_leftover_temp_files_are_removed(tiny_root, straight, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(straight[1], run)
    stale = run / ".checkpoint.pt.abc123.tmp"
    stale.write_bytes(b"x" * 1000)  # what SIGKILL during a write leaves
    train.main(["--resume", str(run / "checkpoint.pt")])
    assert not stale.exists()
    assert "removed 1 temporary files" in (run / "train.log").read_text()


@pytest.mark.slow
def test_resuming_a_finished_run_adds_nothing(straight, tmp_path):
    # Case 5.
    run = tmp_path / "run"
    shutil.copytree(straight[1], run)
    before = {name: (run / name).read_bytes() for name in ("checkpoint.pt", "metrics.json")}
    for _ in range(2):
        result = train.main(["--resume", str(run / "checkpoint.pt")])
    assert result["rank1"] == straight[0]["rank1"]
    for name, data in before.items():
        assert (run / name).read_bytes() == data, name
    assert "nothing to do" in (run / "train.log").read_text()


@pytest.fixture(scope="module")
def failed_evaluation(tiny_root, tmp_path_factory):
    """A baseline run whose first evaluation fails on a truncated gallery image."""
    base = tmp_path_factory.mktemp("failed_eval")
    root = base / "data"
    shutil.copytree(tiny_root, root)
    corrupt = sorted((root / "bounding_box_test").glob("*.jpg"))[-1]
    data = corrupt.read_bytes()  # cut past its header: found only when it is decoded
    corrupt.write_bytes(data[: len(data) * 2 // 3])
    out = base / "run"
    argv = _argv(root, out, "--model", "baseline", "--epochs", "2")
    err = io.StringIO()
    with pytest.raises(SystemExit) as excinfo, contextlib.redirect_stderr(err):
        train.main(argv)
    return excinfo.value.code, err.getvalue(), out, corrupt


@pytest.mark.slow
def test_failed_evaluation_keeps_the_checkpoint_and_resume_may_skip_bad_images(failed_evaluation):
    # Cases 2 and 3: the epoch is saved before evaluation fails, and the message says so;
    # --skip-bad-images may be added on resume, which evaluates that epoch, then continues.
    code, err, out, corrupt = failed_evaluation
    err = err.strip().splitlines()[-1]  # above it: the progress bar
    assert code == 1 and err.startswith(
        "python -m pmm_model.train: error: evaluation after epoch 1 failed "
        "(UnreadableImageError: cannot read"
    )
    assert corrupt.name in err and f"--resume {out / 'checkpoint.pt'}" in err
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
    assert not (out / "metrics.json").exists()
    train.main(["--resume", str(out / "checkpoint.pt"), "--skip-bad-images"])
    assert [m["epoch"] for m in json.loads((out / "metrics.json").read_text())] == [1, 2]
    assert f"skipped 1 unreadable images: {corrupt}" in (out / "train.log").read_text()
    assert load_checkpoint(out / "checkpoint.pt")["args"]["skip_bad_images"] is True


@pytest.mark.slow
def test_epochs_changed_on_resume_rescale_the_schedule(straight, tmp_path):
    # Case 8: a 2-epoch run continued to 3 epochs trains epoch 3 with the 3-epoch schedule.
    run = tmp_path / "run"
    shutil.copytree(straight[1], run)
    train.main(["--resume", str(run / "checkpoint.pt"), "--epochs", "3"])
    checkpoint = load_checkpoint(run / "checkpoint.pt")
    assert checkpoint["epoch"] == 3
    assert checkpoint["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3 * lr_factor(2, 3))
    assert lr_factor(2, 3) != lr_factor(2, 2)  # the old schedule would differ
    assert (
        "--epochs 2 -> 3: the learning-rate schedule is rescaled to 3 epochs"
        in (run / "train.log").read_text()
    )


@pytest.mark.slow
def test_skip_bad_images_in_the_train_split_keeps_pk_batches(tiny_root, tmp_path, monkeypatch):
    # Case 1: a corrupt image and a directory named like an image in the train split.
    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    train_dir = root / "bounding_box_train"
    sorted(train_dir.glob("*.jpg"))[0].write_bytes(b"not a jpeg")
    (train_dir / "0099_c1s1_000001_01.jpg").symlink_to(root / "query", target_is_directory=True)
    batches = []
    real = Engine.forward_loss

    def record(self, images, pids):
        batches.append(sorted(pids.tolist()))
        return real(self, images, pids)

    monkeypatch.setattr(Engine, "forward_loss", record)
    train.main(
        _argv(
            root,
            tmp_path / "run",
            "--model",
            "baseline",
            "--epochs",
            "1",
            "--skip-bad-images",
            "--channels-last",
        )
    )
    assert len(batches) == 3
    for pids in batches:  # P=2 identities x K=4 images each
        assert len(set(pids)) == 2 and all(pids.count(p) == 4 for p in set(pids))
    assert "skipped 2 unreadable images" in (tmp_path / "run" / "train.log").read_text()


@pytest.mark.slow
def test_an_existing_run_folder_is_refused_unless_overwrite(tiny_root, straight, tmp_path, capsys):
    # Case 4: refuse with both choices named; a second run on a locked folder fails at once.
    before = (straight[1] / "metrics.json").read_bytes()
    assert _exit_code(_argv(tiny_root, straight[1])) == 1
    err = capsys.readouterr().err
    assert "holds another run" in err and "--resume" in err and "--overwrite" in err
    assert (straight[1] / "metrics.json").read_bytes() == before
    with RunFolder(tmp_path / "busy"):
        assert _exit_code(_argv(tiny_root, tmp_path / "busy")) == 1
    assert "in use by another run" in capsys.readouterr().err
    run = tmp_path / "old"
    run.mkdir()
    for name in ("checkpoint.pt", "metrics.json", "train.log"):
        (run / name).write_text("an older run")
    train.main(_argv(tiny_root, run, "--model", "baseline", "--epochs", "1", "--overwrite"))
    assert "an older run" not in (run / "train.log").read_text()
    assert [m["epoch"] for m in json.loads((run / "metrics.json").read_text())] == [1]


@pytest.mark.slow
def test_non_finite_loss_stops_at_once_keeping_the_checkpoint(
    tiny_root, tmp_path, monkeypatch, capsys
):
    # Case 6: a NaN loss in epoch 2, step 2 stops the run before the step is applied.
    real = Engine.forward_loss
    calls = []

    def diverge(self, images, pids):
        calls.append(1)
        loss = real(self, images, pids)
        return loss * float("nan") if len(calls) == 5 else loss

    monkeypatch.setattr(Engine, "forward_loss", diverge)
    argv = _argv(tiny_root, tmp_path, "--model", "baseline", "--epochs", "2", "--eval-every", "5")
    assert _exit_code(argv) == 1
    err = capsys.readouterr().err
    assert "loss is not finite" in err and "epoch 2, step 2/3" in err and "lower --lr" in err
    assert len(calls) == 5
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ids-per-batch", "1"], "argument --ids-per-batch: must be >= 2, got 1"),
        (["--images-per-id", "0"], "argument --images-per-id: must be >= 1, got 0"),
        (["--ids-per-batch", "two"], "argument --ids-per-batch: expected an integer, got 'two'"),
        (["--lr", "-1"], "argument --lr: must be > 0, got -1"),
        (["--lr", "inf"], "argument --lr: must be a finite number, got inf"),
        (["--weight-decay", "nan"], "argument --weight-decay: must be a finite number, got nan"),
        (["--height", "16", "--width", "8"], "argument --num-blocks: must be <= 1"),
        (["--block-size", "50", "50"], "argument --block-size: 50 50 does not fit the 24x8"),
        (["--num-blocks", "100"], "argument --num-blocks: must be <= 32"),
        (["--model", "bdb"], "argument --model: invalid choice: 'bdb'"),
        (["--backbone", "resnet101"], "argument --backbone: expected one of resnet18, resnet34"),
        (["--data", "imagenet"], "argument --data: invalid choice: 'imagenet'"),
        (["--resume", "/no/such/checkpoint.pt"], "argument --resume: no such file"),
        (["--pretrained", "/no/such.pth"], "argument --pretrained: expected 'imagenet' or"),
        (["--p", "4"], "unrecognized arguments: --p 4"),
        (["--device", "tpu:x"], "argument --device: not a torch device: 'tpu:x'"),
    ],
)
def test_bad_arguments_give_clear_errors(argv, message, capsys):
    # Case 9: each fails in parsing, before any data is read.
    with pytest.raises(SystemExit) as excinfo:
        train.parse_args(argv)
    assert excinfo.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"", b"this is a text file\n"])
def test_resume_rejects_an_unreadable_checkpoint_in_one_line(content, tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content)
    with pytest.raises(SystemExit):
        train.parse_args(["--resume", str(path)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    expected = (
        f"python -m pmm_model.train: error: argument --resume: checkpoint '{path}' cannot be read"
    )
    assert err.strip().splitlines()[-1].startswith(expected)


def test_resume_rejects_a_file_that_is_no_checkpoint(tmp_path, capsys):
    path = tmp_path / "weights.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(SystemExit):
        train.parse_args(["--resume", str(path)])
    assert "is not a pmm_model training checkpoint" in capsys.readouterr().err


def test_an_unusable_output_folder_gives_one_line(tiny_root, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert _exit_code(_argv(tiny_root, blocker / "run")) == 1
    err = capsys.readouterr().err
    assert err.startswith("python -m pmm_model.train: error: cannot use output folder")
    assert len(err.strip().splitlines()) == 1


def test_every_option_passes_through_torchrun():
    # torchrun's own parser accepts abbreviations of its options: `--p` would be one.
    options = [
        o for a in train.build_parser()._actions for o in a.option_strings if o.startswith("--")
    ]
    assert len(options) > 30
    for option in options:
        args = get_args_parser().parse_args(
            ["--nproc-per-node", "2", "-m", "pmm_model.train", option, "1"]
        )
        assert args.training_script_args == [option, "1"], option


@pytest.mark.slow
def test_checkpoint_rebuilds_the_model(straight):
    model, config = load_model(straight[1] / "checkpoint.pt")
    assert (config.model, config.backbone, config.num_classes) == ("pmm", "resnet18", 6)
    assert not model.training
    with torch.no_grad():
        assert model(torch.zeros(2, 3, config.height, config.width)).shape == (2, 1536)


@pytest.mark.slow
def test_mix_flag_trains_that_mode_and_the_checkpoint_keeps_it(tiny_root, tmp_path):
    out = tmp_path / "cutout"
    train.main(_argv(tiny_root, out, "--mix", "cutout", "--epochs", "1"))
    model, config = load_model(out / "checkpoint.pt")
    assert config.mix == "cutout"
    assert model.mix == "cutout"
    # The paper's op unless asked otherwise.
    assert train.parse_args(["--preset", "demo"]).config.mix == "a_hard_mix"


def test_help_and_demo_preset(capsys):
    with pytest.raises(SystemExit) as excinfo:
        train.parse_args(["--help"])
    assert excinfo.value.code == 0
    assert "--preset" in capsys.readouterr().out
    config = train.parse_args(["--preset", "demo", "--epochs", "2"]).config
    assert (config.backbone, config.epochs) == ("resnet18", 2)  # flags override presets
    assert config.block_size == (1, 1)  # (3, 2) scaled from 384x128 to 128x64
    assert train.parse_args(["--height", "256"]).config.block_size == (2, 2)


@pytest.mark.parametrize("module", ["pmm_model.train", "pmm_model.cli.train"])
def test_module_entry_points(module, monkeypatch, capsys):
    # runpy runs the module as `python -m` would, without a second interpreter start-up.
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(SystemExit) as excinfo:
        runpy.run_module(module, run_name="__main__")
    assert excinfo.value.code == 0
    assert "--ids-per-batch" in capsys.readouterr().out


# ---- issue 16: never save garbage, never lose a run, clear messages -------------------------


@pytest.mark.slow
def test_a_nan_gradient_on_the_last_step_keeps_the_previous_checkpoint(
    tiny_root, tmp_path, monkeypatch, capsys
):
    # Issue 16.3: a finite loss whose gradients are NaN on the last step of epoch 2 (the 6th
    # step): before, the step was applied and epoch 2's checkpoint held NaN weights.
    real = Engine.forward_loss
    calls = []

    def nan_gradients(self, images, pids):
        calls.append(1)
        loss = real(self, images, pids)
        if len(calls) == 6:
            loss.register_hook(lambda grad: grad * float("nan"))
        return loss

    monkeypatch.setattr(Engine, "forward_loss", nan_gradients)
    argv = _argv(tiny_root, tmp_path, "--model", "baseline", "--eval-every", "5")
    assert _exit_code(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "the gradients are not finite" in err and "epoch 2, step 3/3" in err
    assert f"the last checkpoint ({tmp_path / 'checkpoint.pt'}) is kept" in err
    assert "Try a lower --lr" in err
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert checkpoint["epoch"] == 1
    assert all(
        torch.isfinite(t).all() for t in checkpoint["model"].values() if t.is_floating_point()
    )


@pytest.mark.slow
def test_non_finite_batchnorm_statistics_are_never_checkpointed(
    tiny_root, tmp_path, monkeypatch, capsys
):
    # Issue 16.3: NaN running statistics with a finite loss on the last step of epoch 1.
    def poison_running_var(self):
        bn = next(m for m in self.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        bn.running_var.fill_(float("nan"))

    _calls_after(monkeypatch, "forward_loss", 3, poison_running_var)
    argv = _argv(tiny_root, tmp_path, "--model", "baseline", "--epochs", "1")
    assert _exit_code(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "weights, statistics or optimizer states are not finite (model." in err
    assert "running_var" in err
    assert "epoch 1, step 3/3" in err and "no checkpoint was written" in err
    assert not (tmp_path / "checkpoint.pt").exists()


@pytest.fixture(scope="module")
def four_ids(tmp_path_factory):
    """The issue's tiny run T: a 4-identity folder tree and its options."""
    root = tiny_synthetic_set(tmp_path_factory.mktemp("four_ids"), num_train_ids=4)
    return [
        "--preset", "demo", "--data", "folder", "--root", str(root), "--height", "64",
        "--width", "32", "--ids-per-batch", "2", "--images-per-id", "2", "--feature-dim", "32",
        "--workers", "0", "--device", "cpu",
    ]  # fmt: skip


@pytest.mark.slow
def test_an_exploding_loss_stops_as_diverged(four_ids, tmp_path, capsys):
    # Issue 16.4: with --lr 1e6 the loss went from 7.6 to 2.2e11 at step 2 and on to 2.9e12,
    # and the run exited 0.
    argv = [*four_ids, "--lr", "1e6", "--epochs", "3", "--output-dir", str(tmp_path)]
    assert _exit_code(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "the loss exploded" in err and "over 1000 x the median" in err
    assert "training diverged, no checkpoint was written. Try a lower --lr (now 1e+06)" in err
    assert not (tmp_path / "checkpoint.pt").exists()


@pytest.mark.slow
def test_sigterm_during_the_last_evaluation_exits_128_plus_signal(
    tiny_root, tmp_path, monkeypatch, capsys
):
    # Issue 16.5: the run used to finish and exit 0.
    _calls_after(monkeypatch, "evaluate", 1, lambda self: os.kill(os.getpid(), signal.SIGTERM))
    argv = _argv(tiny_root, tmp_path, "--model", "baseline", "--epochs", "1")
    assert _exit_code(argv) == 128 + signal.SIGTERM
    assert "stopped by SIGTERM after epoch 1; checkpoint saved" in capsys.readouterr().err
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert checkpoint["epoch"] == 1 and [m["epoch"] for m in checkpoint["metrics"]] == [1]


@pytest.mark.slow
def test_a_mid_epoch_checkpoint_resumed_with_fewer_epochs_evaluates_and_stops(
    tiny_root, tmp_path, monkeypatch
):
    # Issue 16.14: SIGTERM in epoch 2 of 3 (step 5), then --resume with --epochs 1: before,
    # TypeError: 'NoneType' object is not subscriptable.
    _calls_after(monkeypatch, "forward_loss", 5, lambda self: os.kill(os.getpid(), signal.SIGTERM))
    argv = _argv(tiny_root, tmp_path, "--model", "baseline", "--epochs", "3", "--eval-every", "5")
    assert _exit_code(argv) == 128 + signal.SIGTERM
    monkeypatch.undo()
    assert (load_checkpoint(tmp_path / "checkpoint.pt")["batches"]) == 2
    result = train.main(["--resume", str(tmp_path / "checkpoint.pt"), "--epochs", "1"])
    assert set(result) == {"rank1", "mAP", "mINP", "wall_seconds"}
    log = (tmp_path / "train.log").read_text()
    assert (
        "has trained 1 epochs and 2 global batches of epoch 2 already (--epochs 1): nothing to "
        "train; evaluating it" in log
    )
    assert [m["epoch"] for m in json.loads((tmp_path / "metrics.json").read_text())] == [1]
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert (checkpoint["epoch"], checkpoint["batches"]) == (1, 2)  # the position is kept


@pytest.mark.slow
def test_resume_notes_name_real_flags_and_the_preset(straight, capsys):
    # Issue 16.18: the notes said "ignoring --p 3" (no such flag) and dropped --preset.
    train.parse_args(
        ["--resume", str(straight[1] / "checkpoint.pt"), "--ids-per-batch", "3", "--preset", "demo"]
    )
    err = capsys.readouterr().err
    assert (
        "note: --resume keeps the checkpoint's --ids-per-batch 2; ignoring --ids-per-batch 3" in err
    )
    assert "ignoring --preset demo" in err
    assert "--p " not in err


def test_resume_auto_starts_a_new_run_in_a_folder_without_one(tmp_path, capsys):
    run = train.parse_args(["--preset", "demo", "--output-dir", str(tmp_path), "--resume", "auto"])
    assert run.checkpoint is None and run.config.epochs == 6
    assert run.start_note == f"no checkpoint in {tmp_path}: starting a new run"
    with pytest.raises(SystemExit) as excinfo:
        train.parse_args(["--output-dir", str(tmp_path), "--resume", "auto", "--overwrite"])
    assert excinfo.value.code == 2
    assert "argument --resume: auto never replaces a run" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_auto_continues_the_folders_own_run_and_checks_its_options(
    tiny_root, straight, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    shutil.copytree(straight[1], run_dir)
    argv = _argv(tiny_root, run_dir, "--resume", "auto")
    run = train.parse_args(argv)
    assert run.checkpoint is not None and run.checkpoint["epoch"] == 2
    assert run.start_note == f"continuing the run in {run_dir} from its checkpoint"
    with pytest.raises(SystemExit) as excinfo:
        train.parse_args([*argv, "--ids-per-batch", "3"])
    assert excinfo.value.code == 2
    assert (
        f"argument --ids-per-batch: {run_dir / 'checkpoint.pt'} holds a run trained with "
        "--ids-per-batch 2, not --ids-per-batch 3: continue it with its own options, or replace "
        "it with --overwrite"
    ) in capsys.readouterr().err


@pytest.mark.slow
def test_ctrl_c_during_start_up_is_one_line_and_130(straight, monkeypatch, capsys):
    # Issue 16.18: Ctrl-C while the checkpoint loads printed a KeyboardInterrupt traceback.
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    import pmm_model.run.engine as engine

    monkeypatch.setattr(engine, "load_checkpoint", interrupted)
    try:
        code = _exit_code(["--resume", str(straight[1] / "checkpoint.pt")])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped the CLI")
    assert code == 130
    assert capsys.readouterr().err == "python -m pmm_model.train: interrupted (Ctrl-C)\n"


# A command's first seconds go to loading torch. The probe sends itself a real SIGINT as the
# command starts importing its CLI module (and torch with it).
_SIGINT_WHILE_LOADING = """
import importlib, os, signal, sys
import pmm_model.cli.scripts as scripts
assert "torch" not in sys.modules, "torch was loaded before the Ctrl-C guard"
real_import = importlib.import_module
def import_interrupted(name):
    os.kill(os.getpid(), signal.SIGINT)
    return real_import(name)
importlib.import_module = import_interrupted
sys.argv = ["pmm-train", "--help"]
scripts.train()
"""


def test_ctrl_c_while_a_command_loads_torch_is_one_line_and_130():
    # Issue 16.18: Ctrl-C in the seconds `python -m pmm_model.train` spends importing torch
    # printed a KeyboardInterrupt traceback and died of the signal (status -2).
    run = subprocess.run(
        [sys.executable, "-c", _SIGINT_WHILE_LOADING],
        capture_output=True,
        text=True,
        timeout=120,
        # A shell without job control starts background jobs with SIGINT ignored, and Python
        # then installs no handler: restore the default so that the child sees Ctrl-C.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert (run.returncode, run.stderr) == (130, "pmm-train: interrupted (Ctrl-C)\n")
