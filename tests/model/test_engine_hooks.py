"""The engine as a small loop plus hooks: a user's hook is called at every point, in order,
after the built-in policies; one ``Engine.resume`` continues a checkpoint; one formatter words
the errors, in the library's words or the CLI's flags.

The runs here use a two-layer network and a stub evaluation on the tiny set, so the loop and
its hooks are what is tested (the real network's runs are in tests/e2e).
"""

from __future__ import annotations

import os
import pickle
import signal
from pathlib import Path

import pytest
import torch
from oracles import tiny_run_options
from torch import nn

from pmm_model.cli.train import FlagWords
from pmm_model.run.config import make_config
from pmm_model.run.engine import Engine, Hook
from pmm_model.run.errors import (
    ConfigError,
    IgnoredOption,
    RunFolderError,
    TrainingDiverged,
    TrainingInterrupted,
    Words,
)


class SmallEngine(Engine):
    """The engine with a linear network and a fixed evaluation."""

    def build_model(self, num_classes: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 64 * 32, num_classes))

    def forward_loss(self, images: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(self.net(images), pids)

    def evaluate(self) -> dict[str, float]:
        return {"rank1": 0.5, "mAP": 0.25, "mINP": 0.125}


class Recorder(Hook):
    """Records every call, and whether the epoch's checkpoint was written before it."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def before_train(self) -> None:
        self.calls.append(("before_train",))

    def before_epoch(self, epoch: int) -> None:
        self.calls.append(("before_epoch", epoch))

    def after_step(self, epoch: int, step: int, loss: float) -> None:
        assert loss == loss and loss > 0  # a real loss, finite
        self.calls.append(("after_step", epoch, step))

    def after_epoch(self, epoch: int, loss: float) -> None:
        saved = torch.load(self.engine.checkpoint_file, weights_only=True)["epoch"]
        self.calls.append(("after_epoch", epoch, saved))

    def after_train(self) -> None:
        self.calls.append(("after_train",))


def _config(root: Path, out: Path, **more):
    return make_config({**tiny_run_options(root), "output_dir": str(out), **more})


def test_a_user_hook_is_called_at_every_point_after_the_built_in_ones(tiny_root, tmp_path):
    recorder = Recorder()
    result = SmallEngine(_config(tiny_root, tmp_path, epochs=2), hooks=[recorder]).run()
    steps = [("after_step", e, s) for e in (0, 1) for s in range(3)]  # 24 images, 8 a batch
    assert (
        recorder.calls
        == [
            ("before_train",),
            ("before_epoch", 0),
            *steps[:3],
            ("after_epoch", 0, 1),  # the checkpointer ran first: epoch 1 is saved
            ("before_epoch", 1),
            *steps[3:],
            ("after_epoch", 1, 2),
            ("after_train",),
        ]
    )
    assert result["rank1"] == 0.5


def test_register_hook_adds_a_hook_and_a_hook_can_stop_the_run(tiny_root, tmp_path):
    class StopAtSecondStep(Hook):
        def after_step(self, epoch: int, step: int, loss: float) -> None:
            if step == 1:
                raise RuntimeError("enough")

    engine = SmallEngine(_config(tiny_root, tmp_path))
    recorder, stopper = Recorder(), StopAtSecondStep()
    engine.register_hook(recorder)
    engine.register_hook(stopper)
    assert engine.hooks[-2:] == [recorder, stopper] and stopper.engine is engine
    with pytest.raises(RuntimeError, match="enough"):
        engine.run()
    assert recorder.calls[-1] == ("after_step", 0, 1)  # registered first, called first


def test_one_resume_continues_a_checkpoint_and_lists_what_it_ignores(tiny_root, tmp_path):
    SmallEngine(_config(tiny_root, tmp_path, epochs=1)).run()
    recorder = Recorder()
    engine = SmallEngine.resume(
        tmp_path / "checkpoint.pt",
        {"epochs": 2, "images_per_id": 2},
        preset="demo",
        hooks=[recorder],
    )
    assert (engine.config.epochs, engine.config.images_per_id) == (2, 4)
    assert engine.ignored == [
        IgnoredOption("preset", None, "demo"),
        IgnoredOption("images_per_id", 4, 2),
    ]
    engine.run()
    assert [c for c in recorder.calls if c[0] == "before_epoch"] == [("before_epoch", 1)]


def test_the_engine_does_not_change_its_configuration(tiny_root, tmp_path):
    config = _config(tiny_root, tmp_path)
    engine = SmallEngine(config)
    engine.run()
    assert config.num_classes is None  # frozen: the engine built a copy with the classes
    assert engine.config.num_classes == 6


def test_one_formatter_words_errors_in_library_or_flag_terms():
    diverged = TrainingDiverged(
        epoch=2, step=3, steps=9, lr=0.5, amp=True, reason="the loss is not finite (nan)"
    )
    assert str(diverged) == (
        "the loss is not finite (nan) at epoch 2, step 3/9: training diverged, no checkpoint "
        "was written. Try a lower lr (now 0.5) or amp='off'"
    )
    assert FlagWords().describe(diverged).endswith("Try a lower --lr (now 0.5) or --amp off")
    stopped = TrainingInterrupted(
        signum=signal.SIGINT, epoch=1, checkpoint=Path("r/checkpoint.pt"), where="epoch 1"
    )
    assert FlagWords().describe(stopped) == (
        "stopped by SIGINT after epoch 1; checkpoint saved: continue with --resume r/checkpoint.pt"
    )
    assert Words().describe(ConfigError("must be >= 1", "eval_every")) == "eval_every: must be >= 1"
    assert FlagWords().describe(IgnoredOption("block_size", (1, 1), [2, 2])) == (
        "--resume keeps the checkpoint's --block-size 1 1; ignoring --block-size 2 2"
    )


def test_the_run_folder_errors_name_flags_only_in_the_cli():
    error = RunFolderError("holds_run", Path("r"), checkpoint=Path("r/checkpoint.pt"))
    assert FlagWords().describe(error) == (
        "output folder 'r' holds another run; continue it with --resume r/checkpoint.pt, or "
        "start over and replace it with --overwrite (or choose another --output-dir)"
    )
    assert str(error) == (
        "output folder 'r' holds another run; continue it with resume r/checkpoint.pt, or "
        "start over and replace it with overwrite=True (or choose another output_dir)"
    )
    copy = pickle.loads(pickle.dumps(error))  # a rank hands it to the others
    assert (type(copy), str(copy)) == (RunFolderError, str(error))


# ---- issue 26 item 1: one command for start and restart -------------------------------------


class SigtermAt(Hook):
    """Sends this process SIGTERM after step ``step`` of epoch ``epoch`` (0-based)."""

    def __init__(self, epoch: int, step: int) -> None:
        self.at = (epoch, step)

    def after_step(self, epoch: int, step: int, loss: float) -> None:
        if (epoch, step) == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow
def test_resume_auto_starts_then_continues_the_folders_run_exactly(tiny_root, tmp_path):
    straight = tmp_path / "straight"
    SmallEngine(_config(tiny_root, straight, epochs=2)).run()
    options = {**tiny_run_options(tiny_root), "epochs": 2, "output_dir": str(tmp_path / "run")}
    first = SmallEngine.resume_or_start(options, hooks=[SigtermAt(1, 0)])
    assert first.checkpoint is None
    with pytest.raises(TrainingInterrupted):
        first.run()  # stopped after epoch 2's second step, checkpointed
    again = SmallEngine.resume_or_start(options)  # the same command
    assert again.checkpoint is not None and again.checkpoint["batches"] == 2
    again.run()
    done = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    expected = torch.load(straight / "checkpoint.pt", weights_only=True)
    assert done["epoch"] == expected["epoch"] == 2
    for name, tensor in expected["model"].items():
        assert torch.equal(done["model"][name], tensor), name
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.index("starting a new run") < log.index("continuing the run in")


def test_resume_auto_refuses_a_folder_that_holds_a_run_of_other_options(tiny_root, tmp_path):
    SmallEngine(_config(tiny_root, tmp_path)).run()
    options = {**tiny_run_options(tiny_root), "output_dir": str(tmp_path), "images_per_id": 2}
    with pytest.raises(ConfigError, match=r"holds a run trained with images_per_id=4, not") as e:
        SmallEngine.resume_or_start(options)
    assert e.value.option == "images_per_id"
    # Runtime options may differ: more epochs continue the same run.
    more = {**tiny_run_options(tiny_root), "output_dir": str(tmp_path), "epochs": 2}
    assert SmallEngine.resume_or_start(more).checkpoint is not None
