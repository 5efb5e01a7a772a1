"""A scheduler's pre-emption warning (SLURM's --signal=USR1@90 sends SIGUSR1): the step ends,
the exact position is checkpointed, the process exits 128 + signal, and the same command with
``--resume auto`` (the requeue) finishes the run as if nothing had happened."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from pmm_model.cli import train
from pmm_model.run.checkpoint import load_checkpoint
from pmm_model.run.engine import Engine

pytestmark = pytest.mark.slow


def _argv(root, out, *extra):
    return [
        "--data", "folder", "--root", str(root), "--output-dir", str(out),
        "--backbone", "resnet18", "--height", "64", "--width", "32", "--ids-per-batch", "2",
        "--images-per-id", "4", "--block-size", "1", "1", "--epochs", "2", "--eval-every", "2",
        "--workers", "0", "--device", "cpu", "--seed", "3", "--resume", "auto",
        "--no-tensorboard", *extra,
    ]  # fmt: skip


def _run(argv) -> int | None:
    try:
        train.main(argv)
    except SystemExit as stop:
        return stop.code  # type: ignore[return-value]
    return 0


def test_sigusr1_checkpoints_the_step_and_the_same_command_finishes_exactly(
    tiny_root, tmp_path, monkeypatch
):
    straight = tmp_path / "straight"
    assert _run(_argv(tiny_root, straight)) == 0

    requeued = tmp_path / "requeued"
    real, calls = Engine.forward_loss, []

    def forward_then_warn(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # the scheduler's warning arrives during the 4th step
            os.kill(os.getpid(), signal.SIGUSR1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "forward_loss", forward_then_warn)
    assert _run(_argv(tiny_root, requeued)) == 128 + signal.SIGUSR1
    monkeypatch.undo()
    stopped = load_checkpoint(requeued / "checkpoint.pt")
    assert (stopped["epoch"], stopped["batches"]) == (1, 1)  # after the 4th step of 3 per epoch
    assert _run(_argv(tiny_root, requeued)) == 0  # the requeued job: the very same command
    finished = load_checkpoint(requeued / "checkpoint.pt")["model"]
    for name, tensor in load_checkpoint(straight / "checkpoint.pt")["model"].items():
        assert torch.equal(finished[name], tensor), name


def test_preempt_signal_none_leaves_sigusr1_alone(tiny_root, tmp_path):
    engine = train.parse_args(_argv(tiny_root, tmp_path, "--preempt-signal", "none"))
    assert signal.SIGUSR1 not in engine.signals.SIGNALS
    default = train.parse_args(_argv(tiny_root, tmp_path / "b"))
    assert signal.SIGUSR1 in default.signals.SIGNALS
