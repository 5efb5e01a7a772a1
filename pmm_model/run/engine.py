"""The training engine: epoch loop, checkpoints, evaluation, DDP, faults and signals.

:class:`Engine` runs one training run from a configuration (:mod:`pmm_model.run.config`), in one
process or under ``torchrun`` with one process per device (DDP). Subclass it to change a part
(torchreid style): :meth:`Engine.build_data`, :meth:`Engine.build_model`,
:meth:`Engine.build_optimizer`, :meth:`Engine.build_criterion`, :meth:`Engine.forward_loss`,
:meth:`Engine.evaluate`. :func:`run_training` is the plain-Python entry point.

What a run guarantees:

* **Distributed.** Every rank trains on distinct P x K batches of one seeded global order
  (:class:`~pmm_model.data.sampler.PKSampler`), so the global batch is ``world_size * P * K``;
  gradients are averaged by DDP. PMM's mixing partners are drawn within each rank's own batch.
  Rank 0 alone writes the log, checkpoints and metrics, and evaluates alone (the network is
  the same on every rank) while the others wait.
* **Checkpoints** (``checkpoint.pt``) are written every ``checkpoint_every`` epochs, before
  every evaluation and at the end, atomically and fsynced (:mod:`pmm_model.run.checkpoint`). A
  failing evaluation stops the run with an :class:`EvaluationFailed` naming the saved
  checkpoint; resuming it evaluates first.
* **Signals** (:class:`~pmm_model.run.runtime.StopSignals`). SIGTERM or SIGINT (the first one)
  lets the current step finish, writes a checkpoint that records the step, logs it and raises
  :class:`TrainingInterrupted`.
  A second SIGINT stops at once. Resuming continues exactly where the signal stopped it.
* **Divergence** raises :class:`TrainingDiverged` before the step is applied, and the last
  checkpoint is not touched: a loss that is not finite or that explodes, or gradients that are
  not finite without fp16 loss scaling, which skips such steps itself
  (:mod:`pmm_model.run.divergence` says when).
  A checkpoint is never written with a non-finite weight, BatchNorm statistic or optimizer
  state: the run stops as diverged instead.
* **Distributed jobs** check at start-up that every rank has the same configuration
  (:class:`RanksDisagree`), and a signal ends every rank within :attr:`Engine.stop_grace`
  seconds even when a collective hangs.
* **Resume** reproduces the uninterrupted run exactly (same world size; any number of loader
  workers). A changed ``epochs`` rescales the learning-rate schedule to the new length (and
  the log says so); resuming a finished run changes nothing.

Errors are :class:`TrainingError` subclasses whose attributes say where the run stopped and
what was kept, so a front end can word them in its own terms (the CLI names its flags). The
engine reports progress through the ``pmm_model.run.engine`` logger.

Example:
    >>> metrics = run_training({"epochs": 1}, preset="demo")  # doctest: +SKIP
    >>> sorted(metrics)  # doctest: +SKIP
    ['mAP', 'mINP', 'rank1', 'wall_seconds']
"""

from __future__ import annotations

import json
import logging
import random
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from pmm_model.data.datasets import ReIDDataset, build_dataset
from pmm_model.data.loaders import build_test_loaders, build_train_loader
from pmm_model.data.sampler import PKSampler
from pmm_model.evaluation.evaluator import evaluate
from pmm_model.nets.losses import PMMLoss
from pmm_model.nets.models import build_model
from pmm_model.run.checkpoint import (
    ResumePoint,
    atomic_write,
    load_checkpoint,
    non_finite,
    rank_seed,
    restore_training,
    rng_state,
    save_checkpoint,
)
from pmm_model.run.config import ConfigError, make_config, model_options, resume_config
from pmm_model.run.divergence import LossWatch, gradients_finite
from pmm_model.run.errors import (
    EvaluationFailed,
    RanksDisagree,
    TrainingDiverged,
    TrainingError,
    TrainingInterrupted,
)
from pmm_model.run.folder import CHECKPOINT, METRICS, RunFolder
from pmm_model.run.runtime import Distributed, StopSignals, init_distributed

__all__ = [
    "AMP_DTYPES",
    "Engine",
    "EvaluationFailed",
    "RanksDisagree",
    "TrainingDiverged",
    "TrainingError",
    "TrainingInterrupted",
    "lr_factor",
    "run_training",
]

logger = logging.getLogger("pmm_model.run.engine")

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}
METRIC_KEYS = ("rank1", "mAP", "mINP")


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


class Engine:
    """One training run of a configuration; :meth:`run` trains and returns the final metrics.

    Args:
        config: a full configuration (:func:`pmm_model.run.config.make_config` or
            :func:`~pmm_model.run.config.resume_config`).
        checkpoint: a loaded checkpoint (:func:`pmm_model.run.checkpoint.load_checkpoint`) to
            continue, or None to start afresh.
        checkpoint_path: where ``checkpoint`` was read from (for messages, and to tell
            whether the run continues in its own folder).
        overwrite: start over in an output folder that holds another run.
        option_name: how the log names a configuration key (e.g. as a command-line flag);
            default: the key itself.

    Example:
        >>> class WithSGD(Engine):  # doctest: +SKIP
        ...     def build_optimizer(self, model):
        ...         return torch.optim.SGD(model.parameters(), lr=self.config["lr"], momentum=0.9)
        >>> WithSGD(make_config(preset="demo")).run()  # doctest: +SKIP
    """

    stop_grace: float = 60.0
    """Seconds every rank of a distributed job has to stop after a signal before it exits
    anyway (a collective may hang when another rank died); one process waits as needed."""

    def __init__(
        self,
        config: dict[str, Any],
        checkpoint: dict[str, Any] | None = None,
        checkpoint_path: str | Path | None = None,
        overwrite: bool = False,
        option_name: Callable[[str], str] | None = None,
    ) -> None:
        self.config = dict(config)
        self.checkpoint = checkpoint
        self.checkpoint_path = checkpoint_path
        self.overwrite = overwrite
        self.option_name: Callable[[str], str] = option_name or str
        output = Path(self.config["output_dir"])
        self.checkpoint_file = output / CHECKPOINT  # where this run writes (rank 0)
        self.metrics_file = output / METRICS
        self.dist = Distributed()
        self.device = torch.device("cpu")
        self.metrics: list[dict[str, Any]] = []
        self.folder: RunFolder | None = None  # rank 0, while the run holds it
        self.signals = StopSignals()
        self.resumed: ResumePoint | None = None  # where a restored run continued
        self.losses = LossWatch()  # this rank's
        # Built by _setup() when the run starts (declared here for readers and type checkers).
        self.model: nn.Module  # the bare network (no DDP wrapper)
        self.net: nn.Module  # what training calls: the model, or its DDP wrapper
        self.optimizer: torch.optim.Optimizer
        self.criterion: nn.Module
        self.scaler: torch.amp.GradScaler
        self.amp_dtype: torch.dtype | None = None
        self.train_loader: DataLoader
        self.sampler: PKSampler
        self.test_loaders: tuple[DataLoader, DataLoader] | None = None  # rank 0 only

    # ---- parts a subclass may replace -------------------------------------------------

    def build_data(self) -> ReIDDataset:
        """The dataset named by ``config["data"]`` (under ``config["root"]``)."""
        return build_dataset(self.config["data"], self.config["root"])

    def build_model(self, num_classes: int) -> nn.Module:
        """The network; options come from :func:`pmm_model.run.config.model_options`."""
        options = model_options(self.config)
        if self.checkpoint is not None:
            options["pretrained"] = None  # the checkpoint holds every weight
        return build_model(self.config["model"], num_classes, **options)

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """Adam with ``config["lr"]`` and ``config["weight_decay"]``."""
        return torch.optim.Adam(
            model.parameters(), lr=self.config["lr"], weight_decay=self.config["weight_decay"]
        )

    def build_criterion(self) -> nn.Module:
        """The loss: maps ``(model output, pids)`` to ``(loss, parts)``."""
        return PMMLoss(margin=self.config["margin"])

    def forward_loss(self, images: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        """The training loss of one batch (called under autocast; backward is the engine's)."""
        loss, _ = self.criterion(self.net(images, pids), pids)
        return loss

    def evaluate(self) -> dict[str, float]:
        """Rank-1, mAP and mINP of the bare network on query/gallery (rank 0 only)."""
        if self.test_loaders is None:
            raise RuntimeError("evaluate() runs on rank 0 of a started run only")
        query_loader, gallery_loader = self.test_loaders
        # Forked RNG: evaluation must not shift the training stream, or a resumed run would
        # differ from an uninterrupted one depending on when it evaluated.
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            result = evaluate(self.model, query_loader, gallery_loader, self.device)
        return {"rank1": float(result.cmc[0]), "mAP": float(result.mAP), "mINP": float(result.mINP)}

    # ---- the run ------------------------------------------------------------------------

    def run(self) -> dict[str, float]:
        """Train (or continue) the run; returns the last evaluation's ``rank1``, ``mAP``,
        ``mINP`` (fractions) and ``wall_seconds`` (this call's duration).

        Under ``torchrun`` it joins the process group and leaves it at the end.

        Raises:
            TrainingError: the run stopped (divergence, failed evaluation, signal); what
                was saved is in the message and the attributes.
            RunFolderError: the output folder is in use, holds another run or is unwritable.
            ConfigError: an option this machine cannot run (e.g. ``sync_bn`` without CUDA).
            ValueError, FileNotFoundError: data or model options that do not work.
        """
        tic = time.perf_counter()
        self.dist, self.device = init_distributed(self.config["device"])
        self.signals.grace = self.stop_grace if self.dist.enabled else None
        try:
            with self.signals:
                self._check_ranks_agree()
                self.dist.on_main(self._open_folder)
                try:
                    entry = self._train()
                finally:
                    if self.folder is not None:
                        self.folder.__exit__(*sys.exc_info())
        finally:
            self.dist.close()
        return {
            **{key: entry[key] for key in METRIC_KEYS},
            "wall_seconds": time.perf_counter() - tic,
        }

    def _check_ranks_agree(self) -> None:
        """Every rank must run the same configuration (one collective; no-op in one process)."""
        if not self.dist.enabled:
            return
        mine = {
            **self.config,
            "resume": None if self.checkpoint_path is None else str(self.checkpoint_path),
            "overwrite": self.overwrite,
        }
        differ = self.dist.disagreement(mine)
        if differ:
            listed = "; ".join(
                f"{self.option_name(key)}: "
                + ", ".join(f"{value!r} on rank {rank}" for rank, value in enumerate(v))
                for key, v in differ.items()
            )
            raise RanksDisagree(
                f"the {self.dist.world_size} processes were started with different options "
                f"({listed}); start every process with the same command",
                values=differ,
            )

    def _open_folder(self) -> None:
        self.folder = RunFolder(
            self.config["output_dir"], self.checkpoint_path, self.overwrite
        ).__enter__()

    def _seed(self) -> None:
        seed = self.config["seed"]
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _setup(self) -> tuple[int, int]:
        """Build everything; returns the epoch and this rank's step the run starts from."""
        config, dist = self.config, self.dist
        if config["sync_bn"] and dist.enabled and self.device.type != "cuda":
            raise ConfigError(
                f"needs CUDA devices (torch's SyncBatchNorm does not run on "
                f"{self.device.type}); drop it",
                "sync_bn",
            )
        if not dist.is_main:  # only rank 0 reports; keep the others' warnings off stderr
            logging.getLogger("pmm_model").addHandler(logging.NullHandler())
        data = self.build_data()
        if self.checkpoint is None:
            # Seeded after loading the data: generating the synthetic set on first use must
            # not change the run.
            self._seed()
        elif data.num_train_pids != config["num_classes"]:
            raise ValueError(
                f"checkpoint {str(self.checkpoint_path)!r} was trained on "
                f"{config['num_classes']} identities, but {config['data']!r} has "
                f"{data.num_train_pids}"
            )
        config["num_classes"] = data.num_train_pids
        if dist.is_main:
            logger.info("%s", data.summary())
            logger.info("options: %s", json.dumps(config, sort_keys=True))
        model = self.build_model(config["num_classes"]).to(self.device)
        if config["channels_last"]:
            model = model.to(memory_format=torch.channels_last)
        if config["sync_bn"] and dist.enabled:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if config["compile"]:
            # The trunk only: PMM's Grad-CAM differentiates tensors inside forward, which
            # compiled graphs do not keep, and the trunk holds nearly all the compute.
            # Module.compile keeps the state-dict keys.
            getattr(model, "backbone", model).compile()
        self.model = model
        self.optimizer = self.build_optimizer(model)
        self.criterion = self.build_criterion()
        self.amp_dtype = AMP_DTYPES[config["amp"]] if self.device.type == "cuda" else None
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        start = (0, 0)
        if self.checkpoint is not None:
            start = self._restore(self.checkpoint)
        elif dist.rank:
            # Distinct mixing draws per rank; DDP gives every rank rank 0's initial weights.
            torch.manual_seed(rank_seed(config["seed"], dist.rank))
        net = model
        if dist.enabled:
            net = DistributedDataParallel(
                model, device_ids=[self.device] if self.device.type == "cuda" else None
            )
        self.net = net
        pin = self.device.type == "cuda"
        self.train_loader, self.sampler = build_train_loader(
            data.train, config, dist.rank, dist.world_size, pin
        )
        if start[1] >= self.sampler.steps():
            raise ValueError(
                f"checkpoint {str(self.checkpoint_path)!r}: its batch counter is beyond the "
                f"{self.sampler.steps() * dist.world_size} global batches of an epoch on "
                "this data; it was not written by this run"
            )
        if dist.is_main:
            self.test_loaders = build_test_loaders(
                data,
                config["height"],
                config["width"],
                128,
                config["workers"],
                config["skip_bad_images"],
                pin,
            )
            per_rank = config["ids_per_batch"] * config["images_per_id"]
            logger.info(
                "world size %d: %d x %d = %d images per rank and step, %d per global batch, "
                "%d steps per epoch on %s",
                dist.world_size,
                config["ids_per_batch"],
                config["images_per_id"],
                per_rank,
                per_rank * dist.world_size,
                self.sampler.steps(),
                self.device,
            )
        return start

    def _restore(self, checkpoint: dict[str, Any]) -> tuple[int, int]:
        config, dist = self.config, self.dist
        point = restore_training(
            checkpoint,
            self.model,
            self.optimizer,
            self.scaler,
            dist.rank,
            dist.world_size,
            config["seed"],
            self.checkpoint_path,
        )
        self.metrics = list(checkpoint["metrics"])
        self.resumed = point
        if dist.is_main:
            where = f"epoch {point.epoch}" + (
                f", global batch {point.batches}" if point.batches else ""
            )
            logger.info("resumed from %s after %s", self.checkpoint_path, where)
            if point.saved_world_size != dist.world_size:
                logger.info(
                    "the checkpoint was written by %d processes, this run has %d: it "
                    "continues, but not bit-identically to an unchanged run",
                    point.saved_world_size,
                    dist.world_size,
                )
            if point.saved_epochs != config["epochs"]:
                logger.info(
                    "%s %d -> %d: the learning-rate schedule is rescaled to %d "
                    "epochs (next epoch's lr %.2e)",
                    self.option_name("epochs"),
                    point.saved_epochs,
                    config["epochs"],
                    config["epochs"],
                    self._lr(point.epoch),
                )
            if point.repeated:
                logger.info(
                    "%d global batches done do not split over %d processes: %d are repeated",
                    point.batches,
                    dist.world_size,
                    point.repeated,
                )
        return point.epoch, point.step

    def _lr(self, epoch: int) -> float:
        return self.config["lr"] * lr_factor(epoch, self.config["epochs"])

    def _save(self, epoch: int, batches: int = 0) -> None:
        """Checkpoint (rank 0 writes; every rank contributes its RNG state).

        Raises:
            TrainingDiverged: the state holds a non-finite value; nothing is written.
        """
        states = self.dist.gather(rng_state())

        def write() -> None:
            state = {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
            }
            bad = non_finite(state)
            if bad:
                shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
                steps = self.sampler.steps()
                raise self._diverged(
                    f"{len(bad)} weights, statistics or optimizer states are not finite ({shown})",
                    epoch=epoch + 1 if batches else epoch,
                    step=batches // self.dist.world_size if batches else steps,
                )
            save_checkpoint(
                self.checkpoint_file,
                {
                    **state,
                    "epoch": epoch,
                    "batches": batches,
                    "rng": states,
                    "metrics": self.metrics,
                    "args": self.config,
                },
            )

        self.dist.on_main(write)

    def _write_metrics(self) -> None:
        text = json.dumps(self.metrics, indent=2).encode()
        atomic_write(self.metrics_file, lambda f: f.write(text))

    def _evaluate_and_record(self, epoch: int, seconds: float, batches: int = 0) -> dict[str, Any]:
        """Evaluate on rank 0 after the checkpoint of ``epoch`` (and ``batches``) is written."""

        def on_main() -> dict[str, Any]:
            try:
                entry = {"epoch": epoch, **self.evaluate(), "seconds_per_epoch": seconds}
            except Exception as err:
                cause = f"{type(err).__name__}: {err}"
                raise EvaluationFailed(
                    f"evaluation after epoch {epoch} failed ({cause}); the training up to "
                    f"epoch {epoch} is saved in {self.checkpoint_file}: fix the cause and "
                    "resume it, which evaluates first",
                    epoch=epoch,
                    checkpoint=self.checkpoint_file,
                    cause=cause,
                ) from err
            self.metrics.append(entry)
            logger.info(
                "epoch %d: rank-1 %.1f%%  mAP %.1f%%  mINP %.1f%%",
                epoch,
                100 * entry["rank1"],
                100 * entry["mAP"],
                100 * entry["mINP"],
            )
            self._write_metrics()
            return entry

        entry = self.dist.on_main(on_main)
        self.metrics = self.dist.broadcast(self.metrics)
        self._save(epoch, batches)  # again, now with this evaluation in its metrics
        return entry

    def _stop_requested(self) -> tuple[bool, list[int]]:
        return self._step_flags("")

    def _step_flags(self, problem: str) -> tuple[bool, list[int]]:
        """(a signal reached some rank, the ranks whose ``problem`` is not empty): one
        collective, so every rank decides alike."""
        dist = self.dist
        flags = self.dist.any(
            [self.signals.received is not None]
            + [bool(problem) and rank == dist.rank for rank in range(dist.world_size)],
            self.device,
        )
        return flags[0], [rank for rank, flag in enumerate(flags[1:]) if flag]

    def _interrupt(self, epoch: int, batches: int, saved: bool = False) -> TrainingInterrupted:
        signum = self.signals.received or signal.SIGTERM
        if not saved:
            self._save(epoch, batches)
        where = f"epoch {epoch + 1}, global batch {batches}" if batches else f"epoch {epoch}"
        error = TrainingInterrupted(
            f"stopped by {signal.Signals(signum).name} after {where}; checkpoint saved in "
            f"{self.checkpoint_file}",
            signum,
            epoch=epoch + 1 if batches else epoch,
            checkpoint=self.checkpoint_file,
            where=where,
        )
        if self.dist.is_main:
            logger.info("%s", error)
        return error

    def _train(self) -> dict[str, Any]:
        start_epoch, start_step = self._setup()
        if self.folder is not None:
            self.folder.started()  # every check passed: a replaced run may go now
        config, dist = self.config, self.dist
        epochs, eval_every = config["epochs"], config["eval_every"]
        evaluated = {m["epoch"]: m for m in self.metrics}
        finished = start_epoch >= epochs  # also a mid-epoch checkpoint resumed with fewer epochs
        batches = self.resumed.batches if self.resumed is not None else 0
        # The run stopped before this checkpoint's evaluation was recorded.
        pending = (
            start_epoch > 0
            and start_epoch not in evaluated
            and (finished or (start_step == 0 and start_epoch % eval_every == 0))
        )
        if dist.is_main and finished:
            partial = f" and {batches} global batches of epoch {start_epoch + 1}" if batches else ""
            logger.info(
                "the run has trained %d epochs%s already (%s %d): nothing to %s",
                start_epoch,
                partial,
                self.option_name("epochs"),
                epochs,
                "train; evaluating it" if pending else "do",
            )
        if pending:
            evaluated[start_epoch] = self._evaluate_and_record(start_epoch, 0.0, batches)
            if self._stop_requested()[0]:
                raise self._interrupt(start_epoch, batches, saved=True)
        if finished:
            return self._finish(evaluated[max(evaluated)])
        entry: dict[str, Any] | None = None
        train_seconds, epochs_timed = 0.0, 0
        for epoch in range(start_epoch, epochs):
            tic = time.perf_counter()
            loss = self._train_epoch(epoch, start_step if epoch == start_epoch else 0)
            train_seconds += time.perf_counter() - tic
            epochs_timed += 1
            if dist.is_main:
                logger.info(
                    "epoch %d/%d: loss %.4f  lr %.2e  %.1fs",
                    epoch + 1,
                    epochs,
                    loss,
                    self._lr(epoch),
                    time.perf_counter() - tic,
                )
            done = epoch + 1
            evaluate_now = done % eval_every == 0 or done == epochs
            saved = evaluate_now or done % config["checkpoint_every"] == 0
            if saved:
                self._save(done)
            if self._stop_requested()[0]:
                raise self._interrupt(done, 0, saved)
            if evaluate_now:
                entry = self._evaluate_and_record(done, train_seconds / epochs_timed)
                train_seconds, epochs_timed = 0.0, 0
                if self._stop_requested()[0]:  # a signal during the evaluation
                    raise self._interrupt(done, 0, saved=True)
        if entry is None:  # unreachable: the last epoch always evaluates
            raise RuntimeError("the run ended without an evaluation")
        return self._finish(entry)

    def _finish(self, entry: dict[str, Any]) -> dict[str, Any]:
        if self.dist.is_main:
            logger.info(
                "rank-1: %.1f%%  mAP: %.1f%%  mINP: %.1f%%",
                100 * entry["rank1"],
                100 * entry["mAP"],
                100 * entry["mINP"],
            )
        return entry

    def _train_epoch(self, epoch: int, start_step: int) -> float:
        """Train one epoch from ``start_step``; returns the mean loss of this rank."""
        config, dist = self.config, self.dist
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr(epoch)
        self.sampler.set_epoch(epoch, start_step)
        self.net.train()
        total, steps = 0.0, 0
        bar = tqdm(
            self.train_loader,
            desc=f"epoch {epoch + 1}/{config['epochs']}",
            leave=False,
            dynamic_ncols=True,
            disable=not dist.is_main,
        )
        for step, (images, pids, _) in enumerate(bar, start=start_step):
            images = images.to(self.device, non_blocking=True)
            if config["channels_last"]:
                images = images.contiguous(memory_format=torch.channels_last)
            pids = pids.to(self.device, non_blocking=True)
            with torch.autocast(
                self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
            ):
                loss = self.forward_loss(images, pids)
            value = loss.item()
            problem = self.losses.problem(value)
            stop, ranks = self._step_flags(problem)
            if ranks:  # every rank is here: tell them all what the first such rank saw
                seen = self.dist.gather((problem, value))[ranks[0]]
                raise self._diverged(
                    f"{seen[0]} on rank {ranks[0]}", epoch + 1, step + 1, ranks[0], seen[1]
                )
            self.losses.record(value)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if not self.scaler.is_enabled() and not gradients_finite(self.model):
                # After DDP's all-reduce every rank holds the same gradients, so every rank
                # stops here together.
                raise self._diverged(
                    f"the gradients are not finite (the loss, {value:.4g}, is)",
                    epoch + 1,
                    step + 1,
                    loss=value,
                )
            self.scaler.step(self.optimizer)
            self.scaler.update()
            total, steps = total + value, steps + 1
            bar.set_postfix(loss=f"{value:.3f}", lr=f"{self._lr(epoch):.1e}")
            if stop and step + 1 < self.sampler.steps():
                raise self._interrupt(epoch, (step + 1) * dist.world_size)
        return total / max(steps, 1)

    def _diverged(
        self,
        reason: str,
        epoch: int,
        step: int,
        rank: int | None = None,
        loss: float | None = None,
    ) -> TrainingDiverged:
        """The error for divergence seen at 1-based ``epoch`` and ``step``."""
        steps = self.sampler.steps()
        kept = self.checkpoint_file if self.checkpoint_file.is_file() else None
        saved = f"the last checkpoint ({kept}) is kept" if kept else "no checkpoint was written"
        amp = self.amp_dtype is not None
        error = TrainingDiverged(
            f"{reason} at epoch {epoch}, step {step}/{steps}: training diverged, {saved}; try a "
            f"lower lr (now {self.config['lr']:g})" + (" or amp off" if amp else ""),
            epoch=epoch,
            checkpoint=kept,
            step=step,
            steps=steps,
            rank=rank,
            loss=loss,
            lr=self.config["lr"],
            amp=amp,
            reason=reason,
        )
        if self.dist.is_main:
            logger.error("%s", error)
        return error


def run_training(
    options: dict[str, Any] | None = None,
    preset: str | None = None,
    resume: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, float]:
    """Train one run without a command line (what ``python -m pmm_model.train`` does).

    Args:
        options: configuration keys (:data:`pmm_model.run.config.DEFAULTS`) to set; with
            ``resume`` only the runtime options (:data:`~pmm_model.run.config.RUNTIME_OPTIONS`)
            take effect, others are logged and ignored.
        preset: a key of :data:`pmm_model.run.config.PRESETS` whose values ``options`` override.
        resume: continue this checkpoint (in its folder unless ``options["output_dir"]``).
        overwrite: start over in an output folder that holds another run.

    Returns:
        ``{"rank1", "mAP", "mINP"}`` of the last evaluation (fractions in [0, 1]) and
        ``"wall_seconds"``, the duration of this call.

    Raises:
        ConfigError: a bad option (before any data is read).
        TrainingError, RunFolderError, ValueError, FileNotFoundError: see :meth:`Engine.run`.

    Example:
        >>> run_training({"epochs": 2, "output_dir": "runs/a"}, preset="demo")  # doctest: +SKIP
        {'rank1': 0.52, 'mAP': 0.41, 'mINP': 0.17, 'wall_seconds': 61.3}
    """
    options = dict(options or {})
    if resume is None:
        return Engine(make_config(options, preset), overwrite=overwrite).run()
    checkpoint = load_checkpoint(resume, training=True)
    if preset is not None:
        logger.warning("resuming keeps the checkpoint's options; ignoring preset=%r", preset)
    config, notes = resume_config(dict(checkpoint["args"]), options, str(Path(resume).parent))
    for note in notes:
        logger.warning("%s", note)
    return Engine(config, checkpoint, resume, overwrite).run()
