"""A training run's start-up: the ranks agree, the folder is claimed, the parts are built and
the checkpoint (if any) is restored into them. :class:`~pmm_model.run.engine.Engine` calls these;
they fill in its attributes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pmm_model.data.loaders import build_test_loaders, build_train_loader
from pmm_model.run.checkpoint import ResumePoint, restore_training
from pmm_model.run.config import ConfigError
from pmm_model.run.errors import RanksDisagree
from pmm_model.run.folder import CHECKPOINT, RunFolder, RunFolderError, shows_token
from pmm_model.run.hooks import Run
from pmm_model.run.rng import rank_seed

__all__ = ["AMP_DTYPES", "check_ranks_agree", "check_shared_folder", "open_folder", "start"]

logger = logging.getLogger("pmm_model.run.engine")

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}


def check_ranks_agree(engine: Run) -> None:
    """Every rank must run the same configuration (one collective; no-op in one process).

    The output folder's path is not compared: nodes may mount the shared folder at different
    paths, and :func:`check_shared_folder` checks that it is one folder.
    """
    if not engine.dist.enabled:
        return
    config = engine.config
    resume = None if engine.checkpoint_path is None else str(engine.checkpoint_path)
    if resume is not None and Path(resume) == Path(str(config.output_dir)) / CHECKPOINT:
        resume = f"the output folder's {CHECKPOINT}"
    mine = {
        **{k: v for k, v in config.to_dict().items() if k != "output_dir"},
        "resume": resume,
        "overwrite": engine.overwrite,
    }
    differ = engine.dist.disagreement(mine)
    if differ:
        raise RanksDisagree(values=differ, world_size=engine.dist.world_size)


def open_folder(engine: Run) -> None:
    engine.folder = RunFolder(
        str(engine.config.output_dir), engine.checkpoint_path, engine.overwrite
    ).__enter__()


def check_shared_folder(engine: Run) -> None:
    """Every rank must see the output folder rank 0 opened: rank 0 writes a token file there
    and every rank reads it (two collectives; no-op in one process). Only rank 0 writes into
    the folder, so a rank whose ``output_dir`` is another folder (a node that does not share
    the file system) would train and then lose its view of the run.

    Raises:
        RunFolderError: some rank does not see the token (``kind="not_shared"``), on every
            rank.
    """
    dist = engine.dist
    if not dist.enabled:
        return
    folder = engine.folder
    token = dist.on_main(lambda: folder.write_token() if folder is not None else "")
    try:
        seen = dist.gather(shows_token(str(engine.config.output_dir), token))
    finally:
        if folder is not None:
            folder.remove_token(token)
    blind = [str(rank) for rank, ok in enumerate(seen) if not ok]
    if blind:
        ranks = f"rank{'s' if len(blind) > 1 else ''} {', '.join(blind)}"
        raise RunFolderError("not_shared", Path(str(engine.config.output_dir)), reason=ranks)


def _seed(engine: Run) -> None:
    seed = engine.config.seed
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _build_network(engine: Run, num_classes: int) -> nn.Module:
    """The bare network on the device, its optimizer, loss and gradient scaler."""
    config = engine.config
    model = engine.build_model(num_classes).to(engine.device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if config.sync_bn and engine.dist.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if config.compile:
        # The trunk only: PMM's Grad-CAM differentiates tensors inside forward, which
        # compiled graphs do not keep, and the trunk holds nearly all the compute.
        # Module.compile keeps the state-dict keys.
        getattr(model, "backbone", model).compile()
    engine.model = model
    engine.optimizer = engine.build_optimizer(model)
    engine.criterion = engine.build_criterion()
    engine.amp_dtype = AMP_DTYPES[config.amp] if engine.device.type == "cuda" else None
    engine.scaler = torch.amp.GradScaler(
        engine.device.type, enabled=engine.amp_dtype == torch.float16
    )
    return model


def start(engine: Run) -> tuple[int, int]:
    """Build the run's parts and restore its checkpoint; returns the epoch and this rank's
    step the run starts from."""
    config, dist = engine.config, engine.dist
    if config.sync_bn and dist.enabled and engine.device.type != "cuda":
        raise ConfigError(
            f"needs CUDA devices (torch's SyncBatchNorm does not run on "
            f"{engine.device.type}); drop it",
            "sync_bn",
        )
    if not dist.is_main:  # only rank 0 reports; keep the others' warnings off stderr
        logging.getLogger("pmm_model").addHandler(logging.NullHandler())
    data = engine.build_data()
    if engine.checkpoint is None:
        # Seeded after loading the data: generating the synthetic set on first use must
        # not change the run.
        _seed(engine)
    elif data.num_train_pids != config.num_classes:
        raise ValueError(
            f"checkpoint {str(engine.checkpoint_path)!r} was trained on "
            f"{config.num_classes} identities, but {config.data!r} has "
            f"{data.num_train_pids}"
        )
    engine.config = config = dataclasses.replace(config, num_classes=data.num_train_pids)
    if dist.is_main:
        if engine.start_note:
            logger.info("%s", engine.start_note)
        logger.info("%s", data.summary())
        logger.info("options: %s", json.dumps(config.to_dict(), sort_keys=True))
    model = _build_network(engine, data.num_train_pids)
    start = (0, 0)
    if engine.checkpoint is not None:
        start = _restore(engine, engine.checkpoint)
    elif dist.rank:
        # Distinct mixing draws per rank; DDP gives every rank rank 0's initial weights.
        torch.manual_seed(rank_seed(config.seed, dist.rank))
    net = model
    if dist.enabled:
        net = DistributedDataParallel(
            model, device_ids=[engine.device] if engine.device.type == "cuda" else None
        )
    engine.net = net
    pin = engine.device.type == "cuda"
    engine.train_loader, engine.sampler = build_train_loader(
        data.train, config, dist.rank, dist.world_size, pin
    )
    if engine.resumed is not None:
        start = _continue_at(engine, engine.resumed)
    if dist.is_main:
        engine.test_loaders = build_test_loaders(
            data,
            config.height,
            config.width,
            128,
            config.workers,
            config.skip_bad_images,
            pin,
        )
        per_rank = config.ids_per_batch * config.images_per_id
        logger.info(
            "world size %d: %d x %d = %d images per rank and step, %d per global batch, "
            "%d steps per epoch on %s",
            dist.world_size,
            config.ids_per_batch,
            config.images_per_id,
            per_rank,
            per_rank * dist.world_size,
            engine.sampler.steps(),
            engine.device,
        )
    return start


def _restore(engine: Run, checkpoint: dict[str, Any]) -> tuple[int, int]:
    config, dist = engine.config, engine.dist
    point = restore_training(
        checkpoint,
        engine.model,
        engine.optimizer,
        engine.scaler,
        dist.rank,
        dist.world_size,
        config.seed,
        engine.checkpoint_path,
    )
    engine.metrics = list(checkpoint["metrics"])
    engine.resumed = point
    if dist.is_main:
        where = f"epoch {point.epoch}" + (
            f", global batch {point.batches}" if point.batches else ""
        )
        logger.info("resumed from %s after %s", engine.checkpoint_path, where)
        if point.saved_world_size != dist.world_size:
            logger.info(
                "the checkpoint was written by %d processes, this run has %d: it "
                "continues, but not bit-identically to an unchanged run",
                point.saved_world_size,
                dist.world_size,
            )
        if point.saved_epochs != config.epochs:
            logger.info(
                "%s %d -> %d: the learning-rate schedule is rescaled to %d "
                "epochs (next epoch's lr %.2e)",
                engine.words.option("epochs"),
                point.saved_epochs,
                config.epochs,
                config.epochs,
                engine.schedule.lr(point.epoch),
            )
    return point.epoch, point.step


def _continue_at(engine: Run, point: ResumePoint) -> tuple[int, int]:
    """The epoch and this rank's step a restored run continues from, now that the sampler
    says how many steps the epoch has at this world size.

    At another world size the epoch may end before the checkpoint's position (the global batches
    that do not split over the processes are dropped): the run then continues with the next
    epoch, and ``engine.resumed`` says so.

    Raises:
        ValueError: at the checkpoint's own world size, a position beyond the epoch.
    """
    dist, sampler = engine.dist, engine.sampler
    sampler.set_epoch(point.epoch)
    steps = sampler.steps()
    if point.step < steps:
        if point.repeated and dist.is_main:
            logger.info(
                "%d global batches done do not split over %d processes: %d are repeated",
                point.batches,
                dist.world_size,
                point.repeated,
            )
        return point.epoch, point.step
    if point.saved_world_size == dist.world_size:
        raise ValueError(
            f"checkpoint {str(engine.checkpoint_path)!r}: its batch counter is beyond the "
            f"{steps * dist.world_size} global batches of an epoch on this data; it was not "
            "written by this run"
        )
    if dist.is_main:
        logger.info(
            "the %d global batches done cover epoch %d at %d processes (%d steps each, the "
            "other batches dropped): continuing with epoch %d",
            point.batches,
            point.epoch + 1,
            dist.world_size,
            steps,
            point.epoch + 2,
        )
    engine.resumed = dataclasses.replace(
        point, epoch=point.epoch + 1, step=0, batches=0, repeated=0
    )
    return point.epoch + 1, 0
