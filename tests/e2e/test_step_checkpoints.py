"""Step-level checkpoints (``--checkpoint-every-steps``, ``--checkpoint-every-minutes``): a crash
in a long epoch loses at most N steps, the resume from the mid-epoch checkpoint is bit-exact, and
a checkpoint that would record nothing new is not written again.

The runs are the tiny ones of ``test_train_cli.py``: resnet18 at 64x32 on 6 ids x 4 images,
P=2 x K=4, so three steps per epoch.
"""

from __future__ import annotations

import os
import signal

import pytest
import torch
from oracles.runs import last_line, run_train

from pmm_model.cli import train
from pmm_model.run import hooks
from pmm_model.run.checkpoint import load_checkpoint
from pmm_model.run.config import ConfigError, TrainConfig, make_config
from pmm_model.run.engine import Engine


def _argv(root, out, *extra):
    return [
        "--data", "folder", "--root", str(root), "--output-dir", str(out),
        "--backbone", "resnet18", "--height", "64", "--width", "32", "--ids-per-batch", "2",
        "--images-per-id", "4", "--block-size", "1", "1", "--workers", "0", "--device", "cpu",
        "--seed", "3", "--no-tensorboard", "--resume", "auto", *extra,
    ]  # fmt: skip


def _count_steps(monkeypatch, at=None, action=None):
    """Count ``Engine.forward_loss`` calls; run ``action()`` before call ``at`` (1-based)."""
    real, calls = Engine.forward_loss, []

    def counted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == at:
            action()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "forward_loss", counted)
    return calls


def _record_writes(monkeypatch):
    """Record (epoch, batches, evaluations) of every checkpoint written."""
    real, writes = hooks.save_training_checkpoint, []

    def recorded(path, model, optimizer, scaler, **kwargs):
        writes.append((kwargs["epoch"], kwargs["batches"], len(kwargs["metrics"])))
        real(path, model, optimizer, scaler, **kwargs)

    monkeypatch.setattr(hooks, "save_training_checkpoint", recorded)
    return writes


def _position(out):
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    return checkpoint["epoch"], checkpoint["batches"]


@pytest.mark.slow
def test_a_crash_after_a_step_checkpoint_loses_at_most_n_steps_and_resumes_exactly(
    tiny_root, tmp_path, monkeypatch
):
    # Two epochs, evaluated and checkpointed (per epoch) only at the end.
    common = ("--epochs", "2", "--eval-every", "2", "--checkpoint-every", "2")
    straight = tmp_path / "straight"
    assert run_train(_argv(tiny_root, straight, *common))[0] == 0

    crashed = tmp_path / "crashed"
    argv = _argv(tiny_root, crashed, *common, "--checkpoint-every-steps", "2")

    def crash():
        raise RuntimeError("simulated crash")  # no handler runs: as a SIGKILL, nothing saved

    _count_steps(monkeypatch, at=6, action=crash)  # the 3rd step of epoch 2
    with pytest.raises(RuntimeError, match="simulated crash"):
        train.main(argv)
    # Step checkpoints after steps 2 and 4: the latter is epoch 2's first global batch.
    assert _position(crashed) == (1, 1)
    steps = _count_steps(monkeypatch)
    assert run_train(argv)[0] == 0  # the same command continues the folder's run
    assert len(steps) == 2  # only the steps after the last step checkpoint were trained again
    finished = load_checkpoint(crashed / "checkpoint.pt")["model"]
    expected = load_checkpoint(straight / "checkpoint.pt")["model"]
    assert finished.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(finished[name], tensor), name


@pytest.mark.slow
def test_a_checkpoint_is_not_rewritten_when_no_step_happened(tiny_root, tmp_path, monkeypatch):
    argv = _argv(tiny_root, tmp_path, "--epochs", "1", "--checkpoint-every-steps", "1")
    writes = _record_writes(monkeypatch)
    _count_steps(monkeypatch, at=2, action=lambda: os.kill(os.getpid(), signal.SIGTERM))
    code, err = run_train(argv)
    assert code == 128 + signal.SIGTERM, err
    # The signal's checkpoint after step 2 would record what the step checkpoint just did.
    assert writes == [(0, 1, 0), (0, 2, 0)]
    assert _position(tmp_path) == (0, 2)

    writes.clear()
    assert run_train(argv)[0] == 0
    # The last step's checkpoint is the epoch's: the epoch's own is skipped, the one after
    # the evaluation (which records it) is written.
    assert writes == [(1, 0, 0), (1, 0, 1)]


@pytest.mark.slow
def test_checkpoint_every_minutes_checkpoints_within_the_epoch(tiny_root, tmp_path, monkeypatch):
    # A period far below a step's time: a checkpoint after every step.
    argv = _argv(tiny_root, tmp_path, "--epochs", "1", "--checkpoint-every-minutes", "1e-9")
    writes = _record_writes(monkeypatch)
    assert run_train(argv)[0] == 0
    assert writes == [(0, 1, 0), (0, 2, 0), (1, 0, 0), (1, 0, 1)]


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--checkpoint-every-steps", "0", "argument --checkpoint-every-steps: must be >= 1, got 0"),
        ("--checkpoint-every-steps", "-2", "argument --checkpoint-every-steps: must be >= 1"),
        ("--checkpoint-every-minutes", "0", "argument --checkpoint-every-minutes: must be > 0"),
    ],
)
def test_a_period_below_one_is_refused_in_one_line(flag, value, message, capsys):
    with pytest.raises(SystemExit) as stop:
        train.parse_args([flag, value])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in last_line(err)
    assert not any("Traceback" in line for line in err.splitlines())


def test_the_configuration_checks_the_periods_and_old_checkpoints_lack_them():
    with pytest.raises(ConfigError, match=r"an integer in \[1, 1000000000\], got 0") as info:
        make_config({"checkpoint_every_steps": 0})
    assert info.value.option == "checkpoint_every_steps"
    with pytest.raises(ConfigError, match=r"must be a finite number > 0, got -1") as info:
        make_config({"checkpoint_every_minutes": -1})
    assert info.value.option == "checkpoint_every_minutes"
    # A checkpoint written before the options existed: its args load, the options off.
    saved = make_config(preset="demo").to_dict()
    del saved["checkpoint_every_steps"], saved["checkpoint_every_minutes"]
    config = TrainConfig.from_dict(saved)
    assert (config.checkpoint_every_steps, config.checkpoint_every_minutes) == (None, None)
