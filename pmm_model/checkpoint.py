"""Training checkpoints: atomic save, RNG capture, and rebuilding a model from a checkpoint.

A checkpoint is a dict that ``torch.load(..., weights_only=True)`` can read (no pickled
objects): ``model`` (the bare network's state dict: no DDP or torch.compile prefixes),
``optimizer`` and ``scaler`` state dicts, ``epoch`` (epochs completed), ``batches`` (global
batches of epoch ``epoch + 1`` already trained: nonzero only for a checkpoint written on a
signal), ``rng`` (:func:`rng_state` of every rank, in rank order), ``metrics`` (the evaluations
so far) and ``args`` (the training configuration, see :mod:`pmm_model.config`, including
``model``, ``backbone``, ``num_classes``, ``height`` and ``width``).

:func:`restore_training` loads such a checkpoint into a run's model, optimizer and scaler and
sets each rank's RNG state, even when the number of processes changed (see
:class:`ResumePoint`).

Example:
    >>> model, args = load_model("runs/pmm-synthetic/checkpoint.pt")  # doctest: +SKIP
    >>> args["model"], args["num_classes"]  # doctest: +SKIP
    ('pmm', 80)
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

from pmm_model.config import model_options
from pmm_model.models import build_model

__all__ = [
    "ResumePoint",
    "atomic_write",
    "load_checkpoint",
    "load_model",
    "model_options",
    "rank_seed",
    "remove_temp_files",
    "restore_training",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

REQUIRED_ARGS = ("model", "backbone", "num_classes", "height", "width")


def rng_state() -> dict[str, Any]:
    """The python, numpy, torch (and CUDA) RNG states, as plain data and tensors."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": np_state["state"]["key"].tolist(),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states captured by :func:`rng_state`."""
    random.setstate(state["python"])
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": np_state["bit_generator"],
            "state": {"key": np.asarray(np_state["key"], dtype=np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rank_seed(seed: int, rank: int, *more: int) -> int:
    """A torch seed for ``rank`` derived from the run's ``seed`` (and e.g. an epoch).

    Distinct ranks get independent streams (``numpy.random.SeedSequence``), so PMM's mixing
    draws differ between ranks while the run stays reproducible.

    Example:
        >>> rank_seed(0, 1) == rank_seed(0, 1) != rank_seed(0, 2)
        True
    """
    return int(np.random.SeedSequence([seed, rank, *more]).generate_state(1)[0])


@dataclass(frozen=True)
class ResumePoint:
    """Where a restored run continues, for this rank.

    Attributes:
        epoch: epochs completed.
        step: this rank's steps of epoch ``epoch + 1`` already done.
        batches: global batches of that epoch already done (the checkpoint's ``batches``).
        saved_world_size: how many processes wrote the checkpoint.
        saved_epochs: the run length the checkpoint was trained for.
        repeated: global batches trained again because ``batches`` does not split evenly over
            the new number of processes.
    """

    epoch: int
    step: int
    batches: int
    saved_world_size: int
    saved_epochs: int
    repeated: int


def restore_training(
    checkpoint: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    rank: int,
    world_size: int,
    seed: int,
) -> ResumePoint:
    """Load a training checkpoint into a run's parts and set this rank's RNG state.

    With the same number of processes each rank gets back its own RNG state, so the run
    continues bit-identically. With another number rank 0 takes the first saved state and the
    other ranks a fresh stream (:func:`rank_seed` of ``seed``, the rank and the epoch).

    Args:
        checkpoint: as :func:`load_checkpoint` returns it.
        model: the bare network (no DDP wrapper).
        optimizer, scaler: built for ``model``.
        rank, world_size: this process's place in the job.
        seed: the run's seed.

    Returns:
        Where the run continues on this rank.
    """
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    if checkpoint.get("scaler"):  # a run saved without fp16 has an empty scaler state
        scaler.load_state_dict(checkpoint["scaler"])
    epoch, batches = checkpoint["epoch"], checkpoint.get("batches", 0)
    states = checkpoint["rng"] if isinstance(checkpoint["rng"], list) else [checkpoint["rng"]]
    saved_world = len(states)
    set_rng_state(states[rank] if saved_world == world_size else states[0])
    if saved_world != world_size and rank:
        torch.manual_seed(rank_seed(seed, rank, epoch))
    step, rest = divmod(batches, world_size)
    return ResumePoint(
        epoch=epoch,
        step=step,
        batches=batches,
        saved_world_size=saved_world,
        saved_epochs=checkpoint["args"]["epochs"],
        repeated=world_size - rest if rest else 0,
    )


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> None:
    """Call ``write`` on a temporary file beside ``path``, then move it into place.

    The data is fsynced before ``os.replace`` (atomic) and the folder after it, so after an
    exception, a signal or a power cut ``path`` holds either the previous or the new file,
    complete. An exception removes the temporary file; a process killed mid-write leaves it
    (``.<name>.*.tmp``) for :func:`remove_temp_files`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def remove_temp_files(folder: str | os.PathLike, name: str) -> list[Path]:
    """Remove the temporary files a killed :func:`atomic_write` of ``folder/name`` left.

    Call it only while no other process writes there (the training run holds a lock).
    Returns the removed paths.
    """
    removed = sorted(Path(folder).glob(f".{name}.*.tmp"))
    for tmp in removed:
        tmp.unlink(missing_ok=True)
    return removed


def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any]) -> None:
    """Write ``checkpoint`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: torch.save(checkpoint, f))


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by the training CLI (``weights_only``: no code runs).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not such a checkpoint (a bare state dict, an empty, truncated
            or text file).
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r}: no such file")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch.load fails on junk in many ways (EOFError, IndexError, ...)
        detail = type(err).__name__
        if str(err).strip():
            detail += f": {str(err).strip().splitlines()[0][:200]}"
        raise ValueError(
            f"checkpoint {str(path)!r} cannot be read ({detail}); it is empty, truncated or "
            "not a checkpoint"
        ) from None
    if not isinstance(checkpoint, dict) or not {"model", "args"} <= checkpoint.keys():
        raise ValueError(
            f"checkpoint {str(path)!r} is not a pmm_model training checkpoint "
            "(expected a dict with 'model' and 'args')"
        )
    missing = [key for key in REQUIRED_ARGS if key not in checkpoint["args"]]
    if missing:
        raise ValueError(f"checkpoint {str(path)!r}: its args lack {missing}")
    return checkpoint


def load_model(path: str | os.PathLike, map_location: Any = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the trained network of a checkpoint, in eval mode.

    The network is built from the saved args without pretrained weights (the checkpoint
    holds all of them), then its state dict is loaded strictly.

    Args:
        path: a checkpoint written by ``python -m pmm_model.train``.
        map_location: where to put the tensors, as for ``torch.load``.

    Returns:
        ``(model, args)``: the model in eval mode and the saved training-args dict (with
        ``model``, ``backbone``, ``num_classes``, ``height``, ``width``, ...).

    Example:
        >>> model, args = load_model("runs/demo/checkpoint.pt")  # doctest: +SKIP
        >>> model(torch.zeros(1, 3, args["height"], args["width"])).shape  # doctest: +SKIP
        torch.Size([1, 1536])
    """
    checkpoint = load_checkpoint(path, map_location)
    args = checkpoint["args"]
    options = model_options(args) | {"pretrained": None}
    model = build_model(args["model"], args["num_classes"], **options)
    model.load_state_dict(checkpoint["model"])
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval(), args
