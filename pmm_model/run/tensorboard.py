"""TensorBoard event files in the run folder, as torchreid and fast-reid write them.

:class:`TrainingEvents` writes, under ``<run>/tensorboard/``, each loss term and the learning
rate at every step, the fraction of the map each mixing stage replaced, rank-1 / mAP / mINP at
every evaluation and the mixing picture when one is drawn. Only the process that logs (rank 0)
makes one; ``tensorboard --logdir runs`` shows every run side by side.

Example:
    >>> events = TrainingEvents("runs/demo")  # doctest: +SKIP
    >>> events.step(1, {"ce1": 4.2}, lr=2e-3, mixed={"stage2": 0.094})  # doctest: +SKIP
    >>> events.evaluation(29, {"rank1": 0.5, "mAP": 0.4, "mINP": 0.2})  # doctest: +SKIP
    >>> events.close()  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from pmm_model.run.hooks import Hook

__all__ = ["EVENTS_FOLDER", "TensorBoard", "TrainingEvents"]

# The run folder's subfolder for the event files.
EVENTS_FOLDER = "tensorboard"


class TrainingEvents:
    """The event files of one run (see the module docstring).

    Args:
        run_folder: the run's output folder; the events go to ``<run_folder>/tensorboard``.

    Raises:
        ModuleNotFoundError: tensorboard is not installed (it is in the ``train`` extra).
    """

    def __init__(self, run_folder: str | os.PathLike) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.folder = Path(run_folder) / EVENTS_FOLDER
        self._writer = SummaryWriter(log_dir=str(self.folder))

    def step(
        self,
        global_step: int,
        losses: Mapping[str, float],
        lr: float,
        mixed: Mapping[str, float] | None = None,
    ) -> None:
        """One training step: every loss term (``loss/<name>``) and their sum
        (``loss/total``), the learning rate (``lr``) and each stage's mixed fraction
        (``mixed/<stage>``)."""
        for name, value in losses.items():
            self._writer.add_scalar(f"loss/{name}", float(value), global_step)
        self._writer.add_scalar("loss/total", float(sum(losses.values())), global_step)
        self._writer.add_scalar("lr", float(lr), global_step)
        for stage, fraction in (mixed or {}).items():
            self._writer.add_scalar(f"mixed/{stage}", float(fraction), global_step)

    def evaluation(self, global_step: int, metrics: Mapping[str, float]) -> None:
        """One evaluation: ``eval/rank1``, ``eval/mAP``, ``eval/mINP`` (fractions)."""
        for name, value in metrics.items():
            self._writer.add_scalar(f"eval/{name}", float(value), global_step)

    def picture(self, tag: str, png: str | os.PathLike, global_step: int) -> None:
        """A picture the run drew (e.g. ``mixing.png``), as image ``tag``."""
        with Image.open(png) as image:
            pixels = np.asarray(image.convert("RGB"))
        self._writer.add_image(tag, pixels, global_step, dataformats="HWC")

    def flush(self) -> None:
        """Write what is pending to disk (the writer also does so every few seconds)."""
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()


class TensorBoard(Hook):
    """The engine's hook writing :class:`TrainingEvents` (rank 0, ``config.tensorboard``).

    At every step the loss terms of :attr:`~pmm_model.run.engine.Engine.last_step`, their sum,
    the learning rate and each mixing stage's mean replaced fraction (``mixed/stage2``, ...);
    at every evaluation rank-1, mAP and mINP. The step axis counts this rank's steps from the
    run's start, resumes included.
    """

    def __init__(self) -> None:
        self.events: TrainingEvents | None = None
        self.global_step = 0

    def before_train(self) -> None:
        engine = self.engine
        if not (engine.config.tensorboard and engine.dist.is_main):
            return
        steps = len(engine.train_loader)
        self.global_step = engine.start_epoch * steps + engine.start_step
        self.events = TrainingEvents(engine.config.output_dir or ".")

    def after_step(self, epoch: int, step: int, loss: float) -> None:
        self.global_step += 1
        record = self.engine.last_step
        if self.events is None or record is None:
            return
        lr = self.engine.optimizer.param_groups[0]["lr"]
        terms = {name: float(value) for name, value in record.terms.items()}
        mixed = {f"stage{i + 2}": float(lam.float().mean()) for i, lam in enumerate(record.mixed)}
        self.events.step(self.global_step, terms, lr, mixed)

    def after_epoch(self, epoch: int, loss: float) -> None:
        result = self.engine.evaluation.result
        if self.events is not None and result is not None and result["epoch"] == epoch + 1:
            metrics = {key: result[key] for key in ("rank1", "mAP", "mINP")}
            self.events.evaluation(self.global_step, metrics)
            self.events.flush()

    def after_train(self) -> None:
        if self.events is not None:
            self.events.close()
            self.events = None
