"""The training engine: a small epoch loop, and the policies around it as hooks.

:class:`Engine` runs one training run from a :class:`~pmm_model.run.config.TrainConfig`, in one
process or under ``torchrun`` with one process per device (DDP). Subclass it to change a part
(torchreid style): :meth:`Engine.build_data`, :meth:`Engine.build_model`,
:meth:`Engine.build_optimizer`, :meth:`Engine.build_criterion`, :meth:`Engine.forward_loss`,
:meth:`Engine.evaluate`. What happens around the steps (learning-rate schedule, divergence,
checkpoints, signals, evaluation) is a :class:`~pmm_model.run.hooks.Hook` each; add your own
with ``Engine(..., hooks=[...])`` or :meth:`Engine.register_hook`. :meth:`Engine.resume`
continues a checkpoint; :func:`run_training` is the plain-Python entry point.

What a run guarantees:

* **Distributed.** Every rank trains on distinct P x K batches of one seeded global order
  (:class:`~pmm_model.data.sampler.PKSampler`), so the global batch is ``world_size * P * K``;
  gradients are averaged by DDP. PMM's mixing partners are drawn within each rank's own batch.
  Rank 0 alone writes the log, checkpoints and metrics, and evaluates alone (the network is
  the same on every rank) while the others wait.
* **Checkpoints, signals, divergence, evaluation**: see the hooks (:mod:`pmm_model.run.hooks`).
* **Distributed jobs** check at start-up that every rank sees rank 0's output folder (one
  folder shared by every node) and has the same configuration (:class:`RanksDisagree`), and a
  signal ends every rank within :attr:`Engine.stop_grace` seconds even when a collective hangs.
* **Resume** reproduces the uninterrupted run exactly (same world size; any number of loader
  workers). A changed ``epochs`` rescales the learning-rate schedule to the new length (and
  the log says so); resuming a finished run changes nothing.

Errors are :class:`TrainingError` subclasses whose attributes say where the run stopped and
what was kept; :class:`~pmm_model.run.errors.Words` words them, in a front end's terms if it
names options its way (the CLI names its flags). The engine reports progress through the
``pmm_model.run.engine`` logger.

Example:
    >>> metrics = run_training({"epochs": 1}, preset="demo")  # doctest: +SKIP
    >>> sorted(metrics)  # doctest: +SKIP
    ['mAP', 'mINP', 'rank1', 'wall_seconds']
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pmm_model.data.datasets import ReIDDataset, build_dataset
from pmm_model.data.sampler import PKSampler
from pmm_model.evaluation.evaluator import evaluate
from pmm_model.evaluation.metrics import METRIC_KEYS
from pmm_model.nets.losses import PMMLoss
from pmm_model.nets.models import build_model
from pmm_model.run.checkpoint import (
    ResumePoint,
    checkpoint_config,
    load_checkpoint,
)
from pmm_model.run.config import ConfigError, TrainConfig, make_config, resume_config
from pmm_model.run.errors import (
    EvaluationFailed,
    IgnoredOption,
    RanksDisagree,
    TrainingDiverged,
    TrainingError,
    TrainingInterrupted,
    Words,
)
from pmm_model.run.folder import CHECKPOINT, METRICS, RunFolder
from pmm_model.run.hooks import (
    Checkpointer,
    DivergenceWatch,
    Evaluation,
    Hook,
    Schedule,
    StepCheckpoints,
    StepRecord,
    StopOnSignal,
    lr_factor,
)
from pmm_model.run.runtime import Distributed, StopSignals, init_distributed
from pmm_model.run.startup import (
    AMP_DTYPES,
    check_ranks_agree,
    check_shared_folder,
    open_folder,
    start,
)
from pmm_model.run.tensorboard import TensorBoard

__all__ = [
    "AMP_DTYPES",
    "Engine",
    "EvaluationFailed",
    "Hook",
    "RanksDisagree",
    "TrainingDiverged",
    "TrainingError",
    "TrainingInterrupted",
    "lr_factor",
    "run_training",
]

logger = logging.getLogger("pmm_model.run.engine")


class Engine:
    """One training run of a configuration; :meth:`run` trains and returns the final metrics.

    Args:
        config: a full configuration (:func:`pmm_model.run.config.make_config`); to continue
            a checkpoint use :meth:`resume`.
        checkpoint: a loaded checkpoint (:func:`pmm_model.run.checkpoint.load_checkpoint`) to
            continue, or None to start afresh.
        checkpoint_path: where ``checkpoint`` was read from (for messages, and to tell
            whether the run continues in its own folder).
        overwrite: start over in an output folder that holds another run.
        words: how the log names options (e.g. as command-line flags); default: the keys.
        hooks: more hooks, called after the built-in ones in this order.

    Attributes:
        schedule, divergence, checkpointer, step_checkpoints, stop, evaluation: the built-in
            hooks (:mod:`pmm_model.run.hooks`), called in this order before any other.
        ignored: the options :meth:`resume` ignored (the checkpoint keeps its own).

    Example:
        >>> class WithSGD(Engine):  # doctest: +SKIP
        ...     def build_optimizer(self, model):
        ...         return torch.optim.SGD(model.parameters(), lr=self.config.lr, momentum=0.9)
        >>> WithSGD(make_config(preset="demo")).run()  # doctest: +SKIP
    """

    stop_grace: float = 60.0
    """Seconds every rank of a distributed job has to stop after a signal before it exits
    anyway (a collective may hang when another rank died); one process waits as needed."""

    def __init__(
        self,
        config: TrainConfig,
        checkpoint: dict[str, Any] | None = None,
        checkpoint_path: str | Path | None = None,
        overwrite: bool = False,
        words: Words | None = None,
        hooks: Iterable[Hook] = (),
    ) -> None:
        self.config = config
        self.checkpoint = checkpoint
        self.checkpoint_path = checkpoint_path
        self.overwrite = overwrite
        self.words = words or Words()
        self.ignored: list[IgnoredOption] = []
        self.start_note: str | None = None  # how the run started, for the log (rank 0)
        output = Path(str(config.output_dir))
        self.checkpoint_file = output / CHECKPOINT  # where this run writes (rank 0)
        self.metrics_file = output / METRICS
        self.dist = Distributed()
        self.device = torch.device("cpu")
        self.metrics: list[dict[str, Any]] = []
        self.folder: RunFolder | None = None  # rank 0, while the run holds it
        preempt = None if config.preempt_signal == "none" else config.preempt_signal
        self.signals = StopSignals(preempt=preempt)
        self.resumed: ResumePoint | None = None  # where a restored run continued
        # Where the loop stands (read by hooks).
        self.start_epoch, self.start_step = 0, 0
        self.epoch_seconds = 0.0  # the last epoch's training time
        self.stop_flag = False  # a signal reached some rank (as of the last step)
        self.schedule = Schedule()
        self.divergence = DivergenceWatch()
        self.checkpointer = Checkpointer()
        self.step_checkpoints = StepCheckpoints()
        self.stop = StopOnSignal()
        self.evaluation = Evaluation()
        self.last_step: StepRecord | None = None  # set by forward_loss
        self.hooks: list[Hook] = []
        built_in: tuple[Hook, ...] = (
            self.schedule, self.divergence, self.checkpointer, self.step_checkpoints, self.stop,
            self.evaluation, TensorBoard(),
        )  # fmt: skip
        for hook in (*built_in, *hooks):
            self.register_hook(hook)
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

    @classmethod
    def resume(
        cls,
        path: str | Path,
        options: dict[str, Any] | None = None,
        preset: str | None = None,
        **kwargs: Any,
    ) -> Engine:
        """An engine that continues the checkpoint at ``path`` (in its folder unless
        ``options["output_dir"]``).

        Only the runtime options (:data:`~pmm_model.run.config.RUNTIME_OPTIONS`) of
        ``options`` take effect; the others, and ``preset``, are listed in ``ignored``.

        Args:
            path: the checkpoint.
            options: options given for this run (only those the user set).
            preset: a preset given for this run (ignored).
            **kwargs: the other arguments of :class:`Engine` (``overwrite``, ``words``,
                ``hooks``).

        Raises:
            FileNotFoundError, ValueError: the checkpoint cannot be read or resumed.
            ConfigError: an option the resumed run cannot use.
        """
        checkpoint = load_checkpoint(path, training=True)
        saved = checkpoint_config(checkpoint, path)
        config, ignored = resume_config(saved, dict(options or {}), str(Path(path).parent), preset)
        engine = cls(config, checkpoint, path, **kwargs)
        engine.ignored = ignored
        return engine

    @classmethod
    def resume_or_start(
        cls, options: dict[str, Any] | None = None, preset: str | None = None, **kwargs: Any
    ) -> Engine:
        """An engine that continues the run in its output folder if it has a checkpoint, and
        starts a new one there otherwise: one command for a start and every restart (torchrun
        ``--max-restarts``, a scheduler's requeue). The log says which happened.

        The folder's run must be this command's: every option that is not a runtime option
        (:data:`~pmm_model.run.config.RUNTIME_OPTIONS`) must equal the checkpoint's.

        Args:
            options, preset: as for :func:`~pmm_model.run.config.make_config`.
            **kwargs: the other arguments of :class:`Engine` (``words``, ``hooks``).

        Raises:
            ConfigError: a bad option, or the folder holds a run of other options
                (``option`` names the first).
            FileNotFoundError, ValueError: the folder's checkpoint cannot be resumed.
        """
        fresh = make_config(options, preset)
        path = Path(str(fresh.output_dir)) / CHECKPOINT
        if not path.is_file():
            engine = cls(fresh, **kwargs)
            engine.start_note = f"no checkpoint in {fresh.output_dir}: starting a new run"
            return engine
        engine = cls.resume(path, {**(options or {}), "output_dir": fresh.output_dir}, **kwargs)
        differ = fresh.trains_otherwise(engine.config)
        if differ:
            words, key = engine.words, differ[0]
            raise ConfigError(
                f"{path} holds a run trained with {words.setting(key, getattr(engine.config, key))}"
                f", not {words.setting(key, getattr(fresh, key))}: continue it with its own "
                f"options, or replace it with {words.setting('overwrite', True)}",
                key,
            )
        engine.start_note = f"continuing the run in {fresh.output_dir} from its checkpoint"
        return engine

    def register_hook(self, hook: Hook) -> None:
        """Call ``hook`` at every point of the run, after the hooks registered before it."""
        hook.engine = self
        self.hooks.append(hook)

    # ---- parts a subclass may replace -------------------------------------------------

    def build_data(self) -> ReIDDataset:
        """The dataset named by ``config.data`` (under ``config.root``)."""
        return build_dataset(self.config.data, self.config.root)

    def build_model(self, num_classes: int) -> nn.Module:
        """The network; options come from :meth:`TrainConfig.model_options`."""
        options = self.config.model_options()
        if self.checkpoint is not None:
            options["pretrained"] = None  # the checkpoint holds every weight
        return build_model(self.config.model, num_classes, **options)

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """Adam with ``config.lr`` and ``config.weight_decay``."""
        return torch.optim.Adam(
            model.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay
        )

    def build_criterion(self) -> nn.Module:
        """The loss: maps ``(model output, pids)`` to ``(loss, parts)``."""
        return PMMLoss(margin=self.config.margin)

    def forward_loss(self, images: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        """The training loss of one batch (called under autocast; backward is the engine's).

        Keeps the step's loss terms and mixes in :attr:`last_step` for hooks (TensorBoard).
        """
        output = self.net(images, pids)
        loss, terms = self.criterion(output, pids)
        self.last_step = StepRecord(terms, [info.lam.detach() for info in output.mix_info])
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
        return result.metrics()

    # ---- the run ------------------------------------------------------------------------

    def run(self) -> dict[str, float]:
        """Train (or continue) the run; returns the last evaluation's ``rank1``, ``mAP``,
        ``mINP`` (fractions) and ``wall_seconds`` (this call's duration).

        Under ``torchrun`` it joins the process group and leaves it at the end.

        Raises:
            TrainingError: the run stopped (divergence, failed evaluation, signal); what
                was saved is in the message and the attributes.
            RunFolderError: the output folder is in use, holds another run, is unwritable or
                is not one folder shared by every process.
            ConfigError: an option this machine cannot run (e.g. ``sync_bn`` without CUDA).
            ValueError, FileNotFoundError: data or model options that do not work.
        """
        tic = time.perf_counter()
        self.dist, self.device = init_distributed(self.config.device)
        self.signals.grace = self.stop_grace if self.dist.enabled else None
        try:
            with self.signals:
                self.dist.on_main(open_folder, self)
                try:
                    # A folder that is not shared explains a disagreeing --resume auto.
                    check_shared_folder(self)
                    check_ranks_agree(self)
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

    def _call(self, point: str, *args: Any) -> None:
        for hook in self.hooks:
            getattr(hook, point)(*args)

    def _train(self) -> dict[str, Any]:
        """The loop: every epoch's steps, with the hooks around them; returns the result."""
        self.start_epoch, self.start_step = start(self)
        if self.folder is not None:
            self.folder.started()  # every check passed: a replaced run may go now
        self._call("before_train")
        epochs = self.config.epochs
        for epoch in range(self.start_epoch, epochs):
            self._call("before_epoch", epoch)
            tic = time.perf_counter()
            loss = self._train_epoch(epoch, self.start_step if epoch == self.start_epoch else 0)
            self.epoch_seconds = time.perf_counter() - tic
            if self.dist.is_main:
                lr = self.schedule.lr(epoch)
                logger.info(
                    "epoch %d/%d: loss %.4f  lr %.2e  %.1fs", epoch + 1, epochs, loss, lr,
                    self.epoch_seconds,
                )  # fmt: skip
            self._call("after_epoch", epoch, loss)
        self._call("after_train")
        assert self.evaluation.result is not None  # after_train checked it
        return self.evaluation.result

    def _train_epoch(self, epoch: int, start_step: int) -> float:
        """Train one epoch from ``start_step``; returns the mean loss of this rank."""
        self.sampler.set_epoch(epoch, start_step)
        self.net.train()
        total, steps = 0.0, 0
        bar = tqdm(
            self.train_loader,
            desc=f"epoch {epoch + 1}/{self.config.epochs}",
            leave=False,
            dynamic_ncols=True,
            disable=not self.dist.is_main,
        )
        for step, (images, pids, _) in enumerate(bar, start=start_step):
            value = self._step(epoch, step, images, pids)
            total, steps = total + value, steps + 1
            bar.set_postfix(loss=f"{value:.3f}", lr=f"{self.schedule.lr(epoch):.1e}")
            self._call("after_step", epoch, step, value)
        return total / max(steps, 1)

    def _step(self, epoch: int, step: int, images: torch.Tensor, pids: torch.Tensor) -> float:
        """One optimisation step; returns its loss. Divergence stops it before it applies."""
        images = images.to(self.device, non_blocking=True)
        if self.config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        pids = pids.to(self.device, non_blocking=True)
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
        ):
            loss = self.forward_loss(images, pids)
        value = loss.item()
        problem = self.divergence.problem(value)
        self.stop_flag, ranks = self.step_flags(problem)
        if ranks:  # every rank is here: tell them all what the first such rank saw
            raise self.divergence.seen_on(ranks[0], problem, value, epoch, step)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.divergence.check_gradients(epoch, step, value)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return value

    def step_flags(self, problem: str) -> tuple[bool, list[int]]:
        """(a signal reached some rank, the ranks whose ``problem`` is not empty): one
        collective, so every rank decides alike."""
        dist = self.dist
        flags = dist.any(
            [self.signals.received is not None]
            + [bool(problem) and rank == dist.rank for rank in range(dist.world_size)],
            self.device,
        )
        return flags[0], [rank for rank, flag in enumerate(flags[1:]) if flag]


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
        resume: continue this checkpoint (in its folder unless ``options["output_dir"]``);
            ``"auto"``: continue the output folder's own checkpoint if it has one, else start
            afresh (:meth:`Engine.resume_or_start`).
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
    if resume is None:
        return Engine(make_config(options, preset), overwrite=overwrite).run()
    if str(resume) == "auto":
        if overwrite:
            raise ConfigError("resume='auto' never replaces a run; drop overwrite", "overwrite")
        return Engine.resume_or_start(options, preset).run()
    engine = Engine.resume(resume, options, preset, overwrite=overwrite)
    for note in engine.ignored:
        logger.warning("%s", engine.words.describe(note))
    return engine.run()
