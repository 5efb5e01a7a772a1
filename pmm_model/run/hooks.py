"""The policies of a training run, as hooks that :class:`~pmm_model.run.engine.Engine`'s loop calls.

The engine's loop only trains; what happens around the steps is a :class:`Hook` each, called in
order at five points (fast-reid's ``HookBase`` is the model):

* :class:`Schedule` sets the epoch's learning rate (:func:`lr_factor`).
* :class:`DivergenceWatch` raises :class:`TrainingDiverged` before the step is applied, and the
  last checkpoint is not touched: a loss that is not finite or that explodes, or gradients that
  are not finite without fp16 loss scaling, which skips such steps itself
  (:mod:`pmm_model.run.divergence` says when). A checkpoint is never written with a non-finite
  weight, BatchNorm statistic or optimizer state: the run stops as diverged instead.
* :class:`Checkpointer` writes ``checkpoint.pt`` every ``checkpoint_every`` epochs, before every
  evaluation and at the end, atomically and fsynced (:mod:`pmm_model.run.checkpoint`); a write
  that would record nothing new since the last one is skipped.
* :class:`StepCheckpoints` also writes it within an epoch, every ``checkpoint_every_steps``
  optimizer steps and/or ``checkpoint_every_minutes`` minutes, at the exact position.
* :class:`StopOnSignal`: SIGTERM or SIGINT (the first one; see
  :class:`~pmm_model.run.runtime.StopSignals`) lets the current step finish, writes a checkpoint
  that records the step, logs it and raises :class:`TrainingInterrupted`; a second SIGINT stops
  at once. Resuming continues exactly where the signal stopped it.
* :class:`Evaluation` evaluates every ``eval_every`` epochs and at the end, records the metrics
  and holds the run's result. A failing evaluation stops the run with an
  :class:`EvaluationFailed` naming the saved checkpoint; resuming it evaluates first.

A user hook subclasses :class:`Hook` and is passed as ``Engine(..., hooks=[...])`` or to
:meth:`~pmm_model.run.engine.Engine.register_hook`; it runs after the built-in ones, on every
rank (check ``hook.engine.dist.is_main`` to act on rank 0 only).

Example:
    >>> class LossLog(Hook):
    ...     def __init__(self) -> None:
    ...         self.losses: list[float] = []
    ...     def after_step(self, epoch: int, step: int, loss: float) -> None:
    ...         self.losses.append(loss)
    >>> # Engine(make_config(preset="demo"), hooks=[LossLog()]).run()
"""

from __future__ import annotations

import json
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader

from pmm_model.data.datasets import ReIDDataset
from pmm_model.data.sampler import PKSampler
from pmm_model.run.atomic import atomic_write
from pmm_model.run.checkpoint import ResumePoint, non_finite, save_training_checkpoint
from pmm_model.run.config import TrainConfig
from pmm_model.run.divergence import LossWatch, gradients_finite
from pmm_model.run.errors import (
    EvaluationFailed,
    TrainingDiverged,
    TrainingInterrupted,
    Words,
)
from pmm_model.run.folder import RunFolder
from pmm_model.run.rng import rng_state
from pmm_model.run.runtime import Distributed, StopSignals

__all__ = [
    "Checkpointer",
    "DivergenceWatch",
    "Evaluation",
    "Hook",
    "Run",
    "Schedule",
    "StepCheckpoints",
    "StepRecord",
    "StopOnSignal",
    "lr_factor",
]

logger = logging.getLogger("pmm_model.run.engine")


def lr_factor(epoch: int, epochs: int) -> float:
    """The paper's learning-rate multiplier for 0-based ``epoch`` of ``epochs``, scaled.

    The paper (400 epochs, base 1e-3): warm-up 1e-4 -> 1e-3 over the first 50 epochs in ten
    steps of 5 epochs, 1e-3 until 200, 1e-4 until 300, 1e-5 until 400. Here every milestone
    is the same fraction of ``epochs`` (1/8, 1/80 per warm-up step, 1/2, 3/4), in integer
    arithmetic so no milestone shifts by rounding.

    Example:
        >>> [lr_factor(e, 400) for e in (0, 5, 45, 50, 199, 200, 300)]
        [0.1, 0.2, 1.0, 1.0, 1.0, 0.1, 0.01]
    """
    if 8 * epoch < epochs:
        return (80 * epoch // epochs + 1) / 10
    if 2 * epoch < epochs:
        return 1.0
    if 4 * epoch < 3 * epochs:
        return 0.1
    return 0.01


@dataclass(frozen=True)
class StepRecord:
    """What the last training step computed besides its loss, for hooks that log it.

    Attributes:
        terms: each loss term by name (``ce1``, ``triplet1``, ...), detached.
        mixed: per mixing stage, the (N,) fraction of the map each sample had replaced.
    """

    terms: dict[str, torch.Tensor]
    mixed: list[torch.Tensor]


class Run(Protocol):
    """What hooks (and the start-up) see of a run: :class:`~pmm_model.run.engine.Engine`."""

    config: TrainConfig
    checkpoint: dict[str, Any] | None
    checkpoint_path: str | Path | None
    overwrite: bool
    words: Words
    checkpoint_file: Path
    metrics_file: Path
    dist: Distributed
    device: torch.device
    metrics: list[dict[str, Any]]
    folder: RunFolder | None
    signals: StopSignals
    resumed: ResumePoint | None
    start_note: str | None
    start_epoch: int
    start_step: int
    epoch_seconds: float
    stop_flag: bool
    schedule: Schedule
    divergence: DivergenceWatch
    checkpointer: Checkpointer
    step_checkpoints: StepCheckpoints
    stop: StopOnSignal
    evaluation: Evaluation
    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    scaler: torch.amp.GradScaler
    last_step: StepRecord | None
    amp_dtype: torch.dtype | None
    train_loader: DataLoader
    sampler: PKSampler
    test_loaders: tuple[DataLoader, DataLoader] | None

    def build_data(self) -> ReIDDataset: ...
    def build_model(self, num_classes: int) -> nn.Module: ...
    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer: ...
    def build_criterion(self) -> nn.Module: ...
    def evaluate(self) -> dict[str, float]: ...
    def step_flags(self, problem: str) -> tuple[bool, list[int]]: ...


class Hook:
    """Something done around the training steps; every method does nothing by default.

    Epochs and steps are 0-based: ``after_epoch(epoch)`` follows the training of epoch
    ``epoch`` (so ``epoch + 1`` epochs are done). A hook may raise a
    :class:`~pmm_model.run.errors.TrainingError` to stop the run; the hooks after it are not
    called for that point. ``after_train`` follows a run that completed.

    Attributes:
        engine: the engine that runs the hook (set when the hook is registered).
    """

    engine: Run

    def before_train(self) -> None:
        """Called once the run is built and restored, before its first epoch."""

    def before_epoch(self, epoch: int) -> None:
        """Called before epoch ``epoch`` trains (also a resumed, partly trained one)."""

    def after_step(self, epoch: int, step: int, loss: float) -> None:
        """Called after step ``step`` (this rank's) of ``epoch`` applied; ``loss`` is its loss."""

    def after_epoch(self, epoch: int, loss: float) -> None:
        """Called after epoch ``epoch`` trained; ``loss`` is this rank's mean loss over it."""

    def after_train(self) -> None:
        """Called after the last epoch (at once for a run that had nothing left to train)."""


class Schedule(Hook):
    """The paper's learning-rate schedule (:func:`lr_factor`), scaled to ``epochs``."""

    def lr(self, epoch: int) -> float:
        """The learning rate of 0-based ``epoch``."""
        config = self.engine.config
        return config.lr * lr_factor(epoch, config.epochs)

    def before_epoch(self, epoch: int) -> None:
        for group in self.engine.optimizer.param_groups:
            group["lr"] = self.lr(epoch)


class DivergenceWatch(Hook):
    """Tells a diverging run (:mod:`pmm_model.run.divergence`) and builds its error."""

    def __init__(self) -> None:
        self.losses = LossWatch()  # this rank's

    def problem(self, loss: float) -> str:
        """What is wrong with this step's ``loss`` (``""``: nothing)."""
        return self.losses.problem(loss)

    def after_step(self, epoch: int, step: int, loss: float) -> None:
        self.losses.record(loss)

    def check_gradients(self, epoch: int, step: int, loss: float) -> None:
        """Raise :class:`TrainingDiverged` when the gradients are not finite and no fp16 loss
        scaling skips such steps itself. After DDP's all-reduce every rank holds the same
        gradients, so every rank stops here together."""
        engine = self.engine
        if not engine.scaler.is_enabled() and not gradients_finite(engine.model):
            raise self.error(
                f"the gradients are not finite (the loss, {loss:.4g}, is)",
                epoch + 1,
                step + 1,
                loss=loss,
            )

    def seen_on(self, rank: int, problem: str, loss: float, epoch: int, step: int) -> Exception:
        """The error for a loss ``problem`` that ``rank`` saw first (every rank calls it)."""
        seen = self.engine.dist.gather((problem, loss))[rank]
        return self.error(f"{seen[0]} on rank {rank}", epoch + 1, step + 1, rank, seen[1])

    def error(
        self,
        reason: str,
        epoch: int,
        step: int,
        rank: int | None = None,
        loss: float | None = None,
    ) -> TrainingDiverged:
        """The error for divergence seen at 1-based ``epoch`` and ``step`` (logged on rank 0)."""
        engine = self.engine
        file = engine.checkpoint_file
        error = TrainingDiverged(
            epoch=epoch,
            checkpoint=file if file.is_file() else None,
            step=step,
            steps=engine.sampler.steps(),
            rank=rank,
            loss=loss,
            lr=engine.config.lr,
            amp=engine.amp_dtype is not None,
            reason=reason,
        )
        if engine.dist.is_main:
            logger.error("%s", engine.words.describe(error))
        return error


class Checkpointer(Hook):
    """Writes ``checkpoint.pt`` every ``checkpoint_every`` epochs and before each evaluation;
    a write that would record what the last one did (same position, same evaluations) is
    skipped.

    Attributes:
        saved: whether the last ``after_epoch`` wrote a checkpoint (or found it current).
        steps: optimizer steps trained since the last checkpoint (or since the run started).
        written: ``time.monotonic()`` of the last checkpoint (or of the start).
    """

    saved = False

    def __init__(self) -> None:
        self.steps, self.written = 0, time.monotonic()
        self.position: tuple[int, int, int] | None = None  # (epoch, batches, evaluations)

    def before_train(self) -> None:
        self.steps, self.written = 0, time.monotonic()

    def after_step(self, epoch: int, step: int, loss: float) -> None:
        self.steps += 1

    def after_epoch(self, epoch: int, loss: float) -> None:
        done, engine = epoch + 1, self.engine
        self.saved = engine.evaluation.due(done) or done % engine.config.checkpoint_every == 0
        if self.saved:
            self.save(done)

    def save(self, epoch: int, batches: int = 0) -> None:
        """Checkpoint after ``epoch`` epochs and ``batches`` global batches of the next one
        (rank 0 writes; every rank contributes its RNG state).

        Raises:
            TrainingDiverged: the state holds a non-finite value; nothing is written.
        """
        engine = self.engine
        position = (epoch, batches, len(engine.metrics))
        if position == self.position:  # nothing changed since the last write
            return
        states = engine.dist.gather(rng_state())

        def write() -> None:
            bad = non_finite(
                {
                    "model": engine.model.state_dict(),
                    "optimizer": engine.optimizer.state_dict(),
                    "scaler": engine.scaler.state_dict(),
                }
            )
            if bad:
                shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
                raise engine.divergence.error(
                    f"{len(bad)} weights, statistics or optimizer states are not finite ({shown})",
                    epoch=epoch + 1 if batches else epoch,
                    step=batches // engine.dist.world_size if batches else engine.sampler.steps(),
                )
            save_training_checkpoint(
                engine.checkpoint_file,
                engine.model,
                engine.optimizer,
                engine.scaler,
                epoch=epoch,
                batches=batches,
                rng=states,
                metrics=engine.metrics,
                config=engine.config,
            )

        engine.dist.on_main(write)
        self.position, self.steps, self.written = position, 0, time.monotonic()


class StepCheckpoints(Hook):
    """Checkpoints within an epoch: once ``checkpoint_every_steps`` optimizer steps, or
    ``checkpoint_every_minutes`` minutes, have passed since the last checkpoint (both off by
    default), so that a pre-emption or crash in a long epoch loses at most that much.

    The checkpoint records the exact position, as a signal's does (the global batches done of
    the epoch and every rank's RNG state), so resuming from it is bit-exact. Every rank decides
    alike: the step count is the same on all, and for the minutes the ranks agree in one
    collective per step (only when ``checkpoint_every_minutes`` is set).
    """

    def after_step(self, epoch: int, step: int, loss: float) -> None:
        engine = self.engine
        config, checkpointer = engine.config, engine.checkpointer
        every, minutes = config.checkpoint_every_steps, config.checkpoint_every_minutes
        due = every is not None and checkpointer.steps >= every
        if minutes is not None and not due:
            late = time.monotonic() - checkpointer.written >= 60 * minutes
            due = engine.dist.any([late], engine.device)[0]
        if not due:
            return
        if step + 1 == engine.sampler.steps():  # the epoch is done: record it as such
            checkpointer.save(epoch + 1)
        else:
            checkpointer.save(epoch, (step + 1) * engine.dist.world_size)


class StopOnSignal(Hook):
    """Ends the run after SIGTERM or SIGINT: checkpoint, log, :class:`TrainingInterrupted`.

    A signal seen mid-epoch stops after the current step; one seen at the end of an epoch (or
    during its evaluation) after the epoch's checkpoint.
    """

    def after_step(self, epoch: int, step: int, loss: float) -> None:
        engine = self.engine
        if engine.stop_flag and step + 1 < engine.sampler.steps():
            raise self.interrupt(epoch, (step + 1) * engine.dist.world_size)

    def after_epoch(self, epoch: int, loss: float) -> None:
        self.check(epoch + 1, saved=self.engine.checkpointer.saved)

    def check(self, epoch: int, batches: int = 0, saved: bool = False) -> None:
        """Raise :class:`TrainingInterrupted` if a signal reached any rank (one collective)."""
        if self.engine.step_flags("")[0]:
            raise self.interrupt(epoch, batches, saved)

    def interrupt(self, epoch: int, batches: int, saved: bool = False) -> TrainingInterrupted:
        """The error (logged on rank 0) after checkpointing, unless ``saved`` already."""
        engine = self.engine
        signum = engine.signals.received or signal.SIGTERM
        if not saved:
            engine.checkpointer.save(epoch, batches)
        where = f"epoch {epoch + 1}, global batch {batches}" if batches else f"epoch {epoch}"
        error = TrainingInterrupted(
            signum=signum,
            epoch=epoch + 1 if batches else epoch,
            checkpoint=engine.checkpoint_file,
            where=where,
        )
        if engine.dist.is_main:
            logger.info("%s", engine.words.describe(error))
        return error


class Evaluation(Hook):
    """Evaluates every ``eval_every`` epochs and after the last, on rank 0, after the
    checkpoint; records each result in ``metrics.json`` and the checkpoint.

    A run resumed from a checkpoint whose evaluation was not recorded evaluates first.

    Attributes:
        result: the last evaluation (``epoch``, ``rank1``, ``mAP``, ``mINP``,
            ``seconds_per_epoch``), the run's result; None before the first.
    """

    def __init__(self) -> None:
        self.result: dict[str, Any] | None = None
        self.train_seconds, self.epochs_timed = 0.0, 0

    def due(self, done: int) -> bool:
        """Whether the run evaluates after ``done`` epochs."""
        config = self.engine.config
        return done % config.eval_every == 0 or done == config.epochs

    def before_train(self) -> None:
        engine = self.engine
        start_epoch, epochs = engine.start_epoch, engine.config.epochs
        evaluated = {m["epoch"]: m for m in engine.metrics}
        self.result = evaluated[max(evaluated)] if evaluated else None
        finished = start_epoch >= epochs  # also a mid-epoch checkpoint resumed with fewer epochs
        batches = engine.resumed.batches if engine.resumed is not None else 0
        # The run stopped before this checkpoint's evaluation was recorded.
        pending = (
            start_epoch > 0
            and start_epoch not in evaluated
            and (finished or (engine.start_step == 0 and self.due(start_epoch)))
        )
        if engine.dist.is_main and finished:
            partial = f" and {batches} global batches of epoch {start_epoch + 1}" if batches else ""
            logger.info(
                "the run has trained %d epochs%s already (%s %d): nothing to %s",
                start_epoch,
                partial,
                engine.words.option("epochs"),
                epochs,
                "train; evaluating it" if pending else "do",
            )
        if pending:
            self.evaluate(start_epoch, 0.0, batches)
            engine.stop.check(start_epoch, batches, saved=True)

    def after_epoch(self, epoch: int, loss: float) -> None:
        done = epoch + 1
        self.train_seconds += self.engine.epoch_seconds
        self.epochs_timed += 1
        if self.due(done):
            self.evaluate(done, self.train_seconds / self.epochs_timed)
            self.train_seconds, self.epochs_timed = 0.0, 0
            self.engine.stop.check(done, saved=True)  # a signal during the evaluation

    def after_train(self) -> None:
        if self.result is None:  # unreachable: the last epoch always evaluates
            raise RuntimeError("the run ended without an evaluation")
        if self.engine.dist.is_main:
            logger.info(
                "rank-1: %.1f%%  mAP: %.1f%%  mINP: %.1f%%",
                100 * self.result["rank1"],
                100 * self.result["mAP"],
                100 * self.result["mINP"],
            )

    def evaluate(self, epoch: int, seconds: float, batches: int = 0) -> None:
        """Evaluate on rank 0 after the checkpoint of ``epoch`` (and ``batches``) is written;
        record it, then checkpoint again with it in the metrics."""
        engine = self.engine

        def on_main() -> dict[str, Any]:
            try:
                entry = {"epoch": epoch, **engine.evaluate(), "seconds_per_epoch": seconds}
            except Exception as err:
                raise EvaluationFailed(
                    epoch=epoch,
                    checkpoint=engine.checkpoint_file,
                    cause=f"{type(err).__name__}: {err}",
                ) from err
            engine.metrics.append(entry)
            logger.info(
                "epoch %d: rank-1 %.1f%%  mAP %.1f%%  mINP %.1f%%",
                epoch,
                100 * entry["rank1"],
                100 * entry["mAP"],
                100 * entry["mINP"],
            )
            text = json.dumps(engine.metrics, indent=2).encode()
            atomic_write(engine.metrics_file, lambda f: f.write(text))
            return entry

        self.result = engine.dist.on_main(on_main)
        engine.metrics = engine.dist.broadcast(engine.metrics)
        engine.checkpointer.save(epoch, batches)
