"""What stops a training run: :class:`TrainingError` and its kinds.

Each error says in its message what happened and what was kept, in the library's words; its
attributes say where (epoch, step, checkpoint, ...), so a front end can word it in its own
terms (:mod:`pmm_model.cli.train` names its flags). The errors pickle with their attributes,
so one rank can hand them to the others.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = [
    "EvaluationFailed",
    "RanksDisagree",
    "TrainingDiverged",
    "TrainingError",
    "TrainingInterrupted",
]


def _rebuild_error(cls: type[TrainingError], args: tuple, fields: dict[str, Any]) -> TrainingError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(fields)
    return error


class TrainingError(RuntimeError):
    """A run stopped; the message says what happened and what was kept.

    Subclasses carry the details as attributes (None when unknown), so a front end can word
    the error in its own terms; ``str(error)`` is the library's wording.

    Attributes:
        epoch: the epoch (1-based) the run stopped in or after.
        checkpoint: the checkpoint that holds the run's last good state (None: none written).
    """

    def __init__(
        self, message: str, *, epoch: int | None = None, checkpoint: Path | None = None
    ) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.checkpoint = checkpoint

    def __reduce__(self) -> tuple[Any, ...]:  # picklable, so a rank can pass it to the others
        return _rebuild_error, (type(self), self.args, dict(self.__dict__))


class TrainingDiverged(TrainingError):
    """Training diverged: a non-finite or exploding loss, non-finite gradients, or non-finite
    weights, BatchNorm statistics or optimizer state about to be checkpointed.

    Attributes:
        reason: what was seen, e.g. ``"the loss is not finite (nan on rank 1)"``.
        step, steps: the step of epoch ``epoch`` (1-based) and the steps per epoch.
        rank: the first process that saw it (None: every process, or not known).
        loss: the loss value, when the loss gave it away.
        lr: the base learning rate.
        amp: whether autocast was on.
    """

    def __init__(
        self,
        message: str,
        *,
        epoch: int | None = None,
        checkpoint: Path | None = None,
        step: int | None = None,
        steps: int | None = None,
        rank: int | None = None,
        loss: float | None = None,
        lr: float | None = None,
        amp: bool = False,
        reason: str | None = None,
    ) -> None:
        super().__init__(message, epoch=epoch, checkpoint=checkpoint)
        self.step, self.steps, self.rank, self.loss = step, steps, rank, loss
        self.lr, self.amp, self.reason = lr, amp, reason


class EvaluationFailed(TrainingError):
    """Evaluation raised; the training before it is checkpointed.

    Attributes:
        cause: the evaluation's error, ``"<type>: <message>"``.
    """

    def __init__(
        self,
        message: str,
        *,
        epoch: int | None = None,
        checkpoint: Path | None = None,
        cause: str | None = None,
    ) -> None:
        super().__init__(message, epoch=epoch, checkpoint=checkpoint)
        self.cause = cause


class TrainingInterrupted(TrainingError):
    """SIGTERM or SIGINT stopped the run after checkpointing; ``signum`` says which.

    Attributes:
        signum: the signal's number.
        where: ``"epoch E, global batch B"`` mid-epoch, else ``"epoch E"`` (epochs completed).
    """

    def __init__(
        self,
        message: str,
        signum: int,
        *,
        epoch: int | None = None,
        checkpoint: Path | None = None,
        where: str | None = None,
    ) -> None:
        super().__init__(message, epoch=epoch, checkpoint=checkpoint)
        self.signum = signum
        self.where = where


class RanksDisagree(TrainingError):
    """The processes of a distributed job were started with different configurations.

    Attributes:
        values: for each configuration key that differs, its value on every rank (rank order).
    """

    def __init__(self, message: str, *, values: dict[str, list[Any]] | None = None) -> None:
        super().__init__(message)
        self.values = values or {}
