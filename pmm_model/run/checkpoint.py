"""Training checkpoints: the schema, its writer and its readers, and the rebuilt model.

A checkpoint is a dict that ``torch.load(..., weights_only=True)`` can read (no pickled
objects): ``model`` (the bare network's state dict: no DDP or torch.compile prefixes),
``optimizer`` and ``scaler`` state dicts, ``epoch`` (epochs completed), ``batches`` (global
batches of epoch ``epoch + 1`` already trained: nonzero only for a checkpoint written within
an epoch, on a signal or by step checkpoints), ``rng`` (:func:`~pmm_model.run.rng.rng_state`
of every rank, in rank order), ``metrics`` (the evaluations so far) and ``args`` (the training
configuration, :meth:`~pmm_model.run.config.TrainConfig.to_dict`, with ``num_classes``).
:func:`save_training_checkpoint` writes it (atomically, :mod:`pmm_model.run.atomic`);
:func:`load_checkpoint` and :func:`checkpoint_config` read it.

:func:`restore_training` loads such a checkpoint into a run's model, optimizer and scaler and
sets each rank's RNG state, even when the number of processes changed (see
:class:`ResumePoint`).

Example:
    >>> model, config = load_model("runs/pmm-synthetic/checkpoint.pt")  # doctest: +SKIP
    >>> config.model, config.num_classes  # doctest: +SKIP
    ('pmm', 80)
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pmm_model.nets.models import build_model
from pmm_model.run.atomic import atomic_write
from pmm_model.run.config import ConfigError, TrainConfig, upgrade_saved_config
from pmm_model.run.rng import RNG_KEYS, rank_seed, set_rng_state

__all__ = [
    "ResumePoint",
    "check_checkpoint_fits",
    "check_training_state",
    "checkpoint_config",
    "load_checkpoint",
    "load_model",
    "non_finite",
    "restore_training",
    "save_checkpoint",
    "save_training_checkpoint",
]

REQUIRED_ARGS = ("model", "backbone", "num_classes", "height", "width")
TRAINING_KEYS = ("optimizer", "epoch", "rng", "metrics")


def non_finite(state: Any, name: str = "") -> list[str]:
    """The names of the floating-point tensors in ``state`` that hold a NaN or an infinity.

    ``state`` is a tensor or nested dicts, lists and tuples of them (a checkpoint, a state
    dict); names join the keys with dots.

    Example:
        >>> non_finite({"model": {"w": torch.ones(2), "v": torch.tensor([1.0, float("nan")])}})
        ['model.v']
    """
    if isinstance(state, torch.Tensor):
        finite = not state.is_floating_point() or bool(torch.isfinite(state).all())
        return [] if finite else [name]
    if isinstance(state, dict):
        items: Any = state.items()
    elif isinstance(state, list | tuple):
        items = enumerate(state)
    else:
        return []
    return [bad for key, value in items for bad in non_finite(value, f"{name}.{key}".lstrip("."))]


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
    path: str | os.PathLike | None = None,
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
        path: where the checkpoint was read from, for messages.

    Returns:
        Where the run continues on this rank.

    Raises:
        ValueError: the checkpoint does not fit (see :func:`check_training_state` and
            :func:`check_checkpoint_fits`), or its optimizer state does not fit the optimizer.
    """
    check_training_state(checkpoint, path)
    check_checkpoint_fits(checkpoint, model, path)
    model.load_state_dict(checkpoint["model"])
    try:
        optimizer.load_state_dict(checkpoint["optimizer"])
        if checkpoint.get("scaler"):  # a run saved without fp16 has an empty scaler state
            scaler.load_state_dict(checkpoint["scaler"])
    except (ValueError, KeyError, TypeError, RuntimeError) as err:
        raise ValueError(
            f"{_name(path)}: its optimizer state does not fit the network "
            f"({type(err).__name__}: {_first_line(err)})"
        ) from None
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


def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any]) -> None:
    """Write ``checkpoint`` to ``path`` atomically (see :func:`atomic_write`).

    It is serialised in memory first: torch's own file writer turns a full disk into an
    opaque ``RuntimeError`` (``enforce fail at inline_container.cc``), while a plain write
    of the bytes raises the ``OSError`` that :func:`atomic_write` words, with the size.
    """
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    data = buffer.getbuffer()
    atomic_write(path, lambda f: f.write(data), size=len(data))


def save_training_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    *,
    epoch: int,
    batches: int,
    rng: list[dict[str, Any]],
    metrics: list[dict[str, Any]],
    config: TrainConfig,
) -> None:
    """Write a training checkpoint (the schema above) to ``path`` atomically.

    Args:
        path: the file.
        model: the bare network (no DDP wrapper).
        optimizer, scaler: the run's.
        epoch: epochs completed.
        batches: global batches of epoch ``epoch + 1`` already trained.
        rng: every rank's :func:`~pmm_model.run.rng.rng_state`, in rank order.
        metrics: the evaluations so far.
        config: the run's configuration, with ``num_classes``.
    """
    save_checkpoint(
        path,
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "batches": batches,
            "rng": rng,
            "metrics": metrics,
            "args": config.to_dict(),
        },
    )


def load_checkpoint(
    path: str | os.PathLike, map_location: Any = "cpu", training: bool = False
) -> dict[str, Any]:
    """Read a checkpoint written by the training CLI (``weights_only``: no code runs).

    Args:
        path: the checkpoint file.
        map_location: where to put the tensors, as for ``torch.load``.
        training: the checkpoint is to be resumed: check its training state too
            (:func:`check_training_state`) and its args (:func:`checkpoint_config`).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not such a checkpoint (a bare state dict, an empty, truncated
            or text file), or with ``training`` one that cannot be resumed.
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
    if not isinstance(checkpoint["args"], dict):
        raise ValueError(f"checkpoint {str(path)!r}: its args are not a dict")
    checkpoint["args"] = upgrade_saved_config(checkpoint["args"])
    missing = [key for key in REQUIRED_ARGS if key not in checkpoint["args"]]
    if missing:
        raise ValueError(f"checkpoint {str(path)!r}: its args lack {missing}")
    if training:
        checkpoint_config(checkpoint, path)
        check_training_state(checkpoint, path)
    return checkpoint


def _name(path: str | os.PathLike | None) -> str:
    return "the checkpoint" if path is None else f"checkpoint {str(path)!r}"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else ""


def checkpoint_config(
    checkpoint: dict[str, Any], path: str | os.PathLike | None = None
) -> TrainConfig:
    """The checkpoint's training configuration, checked as a new run's would be.

    Keys a checkpoint written before they existed lacks take their defaults.

    Raises:
        ValueError: ``"checkpoint '<path>': its args do not describe a run: <option>:
            <reason>"`` (an unknown model name, a string height, ...).
    """
    try:
        config = TrainConfig.from_dict(checkpoint["args"])
        if config.num_classes is None:
            raise ConfigError("must be an integer >= 1, got None", "num_classes")
    except (ConfigError, TypeError) as err:
        raise ValueError(f"{_name(path)}: its args do not describe a run: {err}") from None
    return config


def check_training_state(checkpoint: dict[str, Any], path: str | os.PathLike | None = None) -> None:
    """Check that a checkpoint holds what resuming needs: the optimizer state, the epoch and
    batch counters (integers >= 0), every rank's RNG state and the metrics list.

    Raises:
        ValueError: one line naming the checkpoint and what is missing or malformed.
    """
    name = _name(path)
    missing = [key for key in TRAINING_KEYS if key not in checkpoint]
    if missing:
        raise ValueError(
            f"{name} cannot be resumed: it lacks {missing} (it holds weights only: evaluate "
            "it, or start a new run)"
        )
    optimizer = checkpoint["optimizer"]
    if not isinstance(optimizer, dict) or not {"state", "param_groups"} <= optimizer.keys():
        raise ValueError(f"{name} cannot be resumed: its optimizer entry is not a state dict")
    for key in ("epoch", "batches"):
        value = checkpoint.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(
                f"{name} cannot be resumed: its {key} counter must be an integer >= 0, "
                f"got {value!r}"
            )
    states = checkpoint["rng"] if isinstance(checkpoint["rng"], list) else [checkpoint["rng"]]
    if not states or not all(isinstance(s, dict) and set(RNG_KEYS) <= s.keys() for s in states):
        raise ValueError(
            f"{name} cannot be resumed: its RNG state is malformed (expected the "
            f"{', '.join(RNG_KEYS)} states of every process)"
        )
    if not isinstance(checkpoint["metrics"], list):
        raise ValueError(f"{name} cannot be resumed: its metrics are not a list")


def _misfits(saved: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> list[str]:
    """What keeps ``saved`` weights from loading into a network with ``expected`` ones."""
    missing = [key for key in expected if key not in saved]
    unexpected = [key for key in saved if key not in expected]
    reshaped = [key for key in expected if key in saved and saved[key].shape != expected[key].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} weights missing (e.g. {missing[0]!r})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})")
    if reshaped:
        key = reshaped[0]
        problems.append(
            f"{len(reshaped)} of another shape (e.g. {key!r}: {tuple(saved[key].shape)} "
            f"saved, {tuple(expected[key].shape)} in the network)"
        )
    return problems


def check_checkpoint_fits(
    checkpoint: dict[str, Any], model: nn.Module, path: str | os.PathLike | None = None
) -> None:
    """Check that a checkpoint's weights fit ``model`` and are all finite.

    Raises:
        ValueError: one line naming the checkpoint and what does not fit: weights missing,
            unexpected or of another shape (another backbone, another class count), or
            NaN/infinite values (a diverged run's weights: nothing to evaluate or resume).
    """
    name, saved, expected = _name(path), checkpoint["model"], model.state_dict()
    if not isinstance(saved, dict) or not all(isinstance(t, torch.Tensor) for t in saved.values()):
        raise ValueError(f"{name}: its model entry is not a state dict of tensors")
    problems = _misfits(saved, expected)
    if problems:
        args = checkpoint["args"]
        raise ValueError(
            f"{name}: its weights do not fit the network its args describe (model "
            f"{args['model']!r}, backbone {args['backbone']!r}, {args['num_classes']} "
            f"classes): {'; '.join(problems)}"
        )
    nonfinite = [
        key
        for key, tensor in saved.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if nonfinite:
        raise ValueError(
            f"{name}: {len(nonfinite)} of its weights hold NaN or infinite values (e.g. "
            f"{nonfinite[0]!r}); the run that wrote it diverged: use an earlier checkpoint"
        )


def load_model(path: str | os.PathLike, map_location: Any = "cpu") -> tuple[nn.Module, TrainConfig]:
    """Rebuild the trained network of a checkpoint, in eval mode.

    The network is built from the saved configuration without pretrained weights (the
    checkpoint holds all of them), then its state dict is loaded strictly.

    Args:
        path: a checkpoint written by ``python -m pmm_model.train``.
        map_location: where to put the tensors, as for ``torch.load``.

    Returns:
        ``(model, config)``: the model in eval mode and the run's configuration (with
        ``num_classes``; options added since the checkpoint was written take their defaults).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a checkpoint, or one that does not fit the network its args
            describe, or holds non-finite weights (one line naming ``path``).

    Example:
        >>> model, config = load_model("runs/demo/checkpoint.pt")  # doctest: +SKIP
        >>> model(torch.zeros(1, 3, config.height, config.width)).shape  # doctest: +SKIP
        torch.Size([1, 1536])
    """
    checkpoint = load_checkpoint(path, map_location)
    config = checkpoint_config(checkpoint, path)
    options = config.model_options() | {"pretrained": None}
    assert config.num_classes is not None  # checkpoint_config checks it
    model = build_model(config.model, config.num_classes, **options)
    check_checkpoint_fits(checkpoint, model, path)
    model.load_state_dict(checkpoint["model"])
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval(), config
