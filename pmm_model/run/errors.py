"""What stops a training run, and the one place that words it.

Errors carry fields (epoch, step, checkpoint, option, ...); :class:`Words` turns them into one
line. A front end words them in its own terms by naming options its way: the library's
:class:`Words` names configuration keys (``lr``, ``resume=...``), the command line's names its
flags (``--lr``, ``--resume ...``, see :mod:`pmm_model.cli.train`). The errors pickle with
their fields, so one rank can hand them to the others.

Example:
    >>> str(TrainingInterrupted(signum=15, epoch=2, checkpoint=Path("r/c.pt"), where="epoch 2"))
    "stopped by SIGTERM after epoch 2; checkpoint saved: continue with resume='r/c.pt'"
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ConfigError",
    "EvaluationFailed",
    "IgnoredOption",
    "RanksDisagree",
    "RunFolderError",
    "TrainingDiverged",
    "TrainingError",
    "TrainingInterrupted",
    "Words",
]


class ConfigError(ValueError):
    """A configuration value the run cannot use: ``"<option>: <reason>"``.

    Attributes:
        option: the configuration key (None when the error concerns several).
        reason: the message without the option.
    """

    def __init__(self, reason: str, option: str | None = None) -> None:
        super().__init__(f"{option}: {reason}" if option else reason)
        self.option, self.reason = option, reason


@dataclass(frozen=True)
class IgnoredOption:
    """An option given for a resumed run that the checkpoint's value overrides.

    Attributes:
        key: the configuration key, or ``"preset"`` (then ``kept`` is None: the checkpoint
            keeps all its options).
        kept: the checkpoint's value.
        given: the value given and ignored.
    """

    key: str
    kept: Any
    given: Any

    def __str__(self) -> str:
        return Words().describe(self)


def _rebuild_error(cls: type[RuntimeError], args: tuple, fields: dict[str, Any]) -> RuntimeError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(fields)
    return error


class TrainingError(RuntimeError):
    """A run stopped; the message says what happened and what was kept.

    Subclasses carry the details as attributes (None when unknown); ``str(error)`` is
    :meth:`Words.describe` in the library's words (or the message given, if any).

    Attributes:
        epoch: the epoch (1-based) the run stopped in or after.
        checkpoint: the checkpoint that holds the run's last good state (None: none written).
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        epoch: int | None = None,
        checkpoint: Path | None = None,
    ) -> None:
        super().__init__(*([message] if message else []))
        self.epoch = epoch
        self.checkpoint = checkpoint

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else Words().describe(self)

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
        message: str | None = None,
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
        message: str | None = None,
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
        message: str | None = None,
        signum: int = signal.SIGTERM,
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
        world_size: the number of processes.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        values: dict[str, list[Any]] | None = None,
        world_size: int = 0,
    ) -> None:
        super().__init__(message)
        self.values = values or {}
        self.world_size = world_size


class RunFolderError(RuntimeError):
    """The output folder cannot be used: locked by another run, holding one, or unwritable.

    ``str(error)`` is :meth:`pmm_model.run.errors.Words.describe` in the library's words.

    Attributes:
        kind: ``"unusable"`` (``reason`` says why), ``"in_use"``, ``"holds_run"`` (the
            folder's own ``checkpoint`` could be resumed) or ``"not_its_checkpoint"``
            (``resume_from`` would replace the folder's run), or ``"not_shared"`` (the
            processes of a job do not all see the folder; ``reason`` names the ranks that
            do not).
        path: the folder.
    """

    def __init__(
        self,
        kind: str,
        path: Path,
        *,
        reason: str | None = None,
        resume_from: Path | None = None,
        checkpoint: Path | None = None,
    ) -> None:
        super().__init__()
        self.kind, self.path, self.reason = kind, path, reason
        self.resume_from, self.checkpoint = resume_from, checkpoint

    def __str__(self) -> str:
        return Words().describe(self)

    def __reduce__(self) -> tuple[Any, ...]:  # picklable, so a rank can pass it to the others
        return _rebuild_error, (type(self), self.args, dict(self.__dict__))


class Words:
    """How a front end names options; :meth:`describe` words every error and note with it.

    The library names configuration keys as they are (``lr``, ``amp='off'``); a front end
    overrides :meth:`option` and :meth:`setting` (the command line names flags).
    """

    resuming = "resuming"
    """What the front end calls resuming a run, in notes."""

    def option(self, key: str) -> str:
        """The name of configuration ``key`` (or ``"resume"``, ``"preset"``, ``"overwrite"``)."""
        return key

    def setting(self, key: str, value: Any) -> str:
        """``key`` set to ``value``, as the user would write it."""
        return f"{self.option(key)}={value!r}"

    def resume_hint(self, checkpoint: Path | None) -> str:
        """How to continue a stopped run whose last state is in ``checkpoint``."""
        return f"continue with {self.setting('resume', str(checkpoint))}"

    def describe(self, error: BaseException | IgnoredOption) -> str:
        """One line for a failed run's error (or a resume note), in these words."""
        if isinstance(error, IgnoredOption):
            if error.kept is None and error.key == "preset":
                return (
                    f"{self.resuming} keeps the checkpoint's options; ignoring "
                    f"{self.setting('preset', error.given)}"
                )
            return (
                f"{self.resuming} keeps the checkpoint's {self.setting(error.key, error.kept)}; "
                f"ignoring {self.setting(error.key, error.given)}"
            )
        if isinstance(error, RunFolderError):
            return self._folder_error(error)
        if isinstance(error, ConfigError) and error.option is not None:
            return f"{self.option(error.option)}: {error.reason}"
        if isinstance(error, TrainingError) and error.args:
            return str(error.args[0])
        return self._training_error(error)

    def _folder_error(self, err: RunFolderError) -> str:
        folder, output, overwrite = repr(str(err.path)), self.option("output_dir"), "overwrite"
        if err.kind == "in_use":
            return (
                f"output folder {folder} is in use by another run; wait for it to finish or "
                f"choose another {output}"
            )
        if err.kind == "not_its_checkpoint":
            return (
                f"{self.option('resume')} {err.resume_from} is not the checkpoint of the run in "
                f"output folder {folder}, which it would replace; write it to a new {output} (or "
                f"replace that run with {self.setting(overwrite, True)})"
            )
        if err.kind == "holds_run":
            return (
                f"output folder {folder} holds another run; continue it with "
                f"{self.option('resume')} {err.checkpoint}, or start over and replace it with "
                f"{self.setting(overwrite, True)} (or choose another {output})"
            )
        if err.kind == "not_shared":
            return (
                f"output folder {folder} is not one folder shared by every process: {err.reason} "
                f"cannot read the file rank 0 wrote into its {output}; give every node the same "
                f"{output} on a shared file system"
            )
        return f"cannot use output folder {folder}: {err.reason}"

    def _training_error(self, err: BaseException) -> str:
        resume = self.resume_hint(getattr(err, "checkpoint", None))
        if isinstance(err, TrainingInterrupted) and err.checkpoint is not None:
            return (
                f"stopped by {signal.Signals(err.signum).name} after {err.where}; checkpoint "
                f"saved: {resume}"
            )
        if isinstance(err, EvaluationFailed) and err.checkpoint is not None:
            return (
                f"evaluation after epoch {err.epoch} failed ({err.cause}); the training up to "
                f"epoch {err.epoch} is saved in {err.checkpoint}: fix the cause (e.g. "
                f"{self.setting('skip_bad_images', True)} for unreadable images) and {resume}, "
                "which evaluates first"
            )
        if isinstance(err, TrainingDiverged) and err.reason is not None:
            kept = (
                f"the last checkpoint ({err.checkpoint}) is kept"
                if err.checkpoint is not None
                else "no checkpoint was written"
            )
            return (
                f"{err.reason} at epoch {err.epoch}, step {err.step}/{err.steps}: training "
                f"diverged, {kept}. Try a lower {self.option('lr')} (now {err.lr:g})"
                + (f" or {self.setting('amp', 'off')}" if err.amp else "")
            )
        if isinstance(err, RanksDisagree):
            listed = "; ".join(
                f"{self.option(key)}: "
                + ", ".join(f"{value!r} on rank {rank}" for rank, value in enumerate(values))
                for key, values in err.values.items()
            )
            return (
                f"the {err.world_size} processes were started with different options "
                f"({listed}); start every process with the same command"
            )
        return BaseException.__str__(err)  # no fields to word: the message as given
