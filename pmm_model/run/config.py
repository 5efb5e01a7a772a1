"""Training configuration: :class:`TrainConfig`, presets, and the merge on resume.

A configuration is a frozen :class:`TrainConfig`, checked when it is built; a checkpoint stores
it as a plain dict (its ``args``, :meth:`TrainConfig.to_dict`) and :meth:`TrainConfig.from_dict`
reads it back, old key names included. Build one with :func:`make_config`; continue a
checkpoint's with :func:`resume_config`.

Example:
    >>> config = make_config({"epochs": 2}, preset="demo")
    >>> config.backbone, config.epochs, config.block_size
    ('resnet18', 2, (1, 1))
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass, fields
from typing import Any

import torch

from pmm_kernels import block_grid
from pmm_model.nets.backbones import BACKBONES, is_timm_backbone, timm_backbone_problem
from pmm_model.nets.models import CAM_MODES, MIX_MODES, MODELS, build_model
from pmm_model.run.errors import ConfigError, IgnoredOption
from pmm_model.run.limits import LIMITS

__all__ = [
    "DEFAULTS",
    "PRESETS",
    "RENAMED_OPTIONS",
    "RUNTIME_OPTIONS",
    "ConfigError",
    "TrainConfig",
    "feature_map_size",
    "make_config",
    "resume_config",
    "upgrade_saved_config",
]


@dataclass(frozen=True)
class TrainConfig:
    """One training run's configuration (the paper's setting by default); checked when built.

    ``block_size`` None means (3, 2) scaled from 384x128 to the input, ``output_dir`` None
    ``runs/<model>-<data>``; both are filled in when the configuration is built.
    ``num_classes`` is None until the data is known (the engine then builds a copy with it,
    ``dataclasses.replace``); a checkpoint's configuration has it.

    Raises:
        ConfigError: for the first bad option (``option``), with its value.
    """

    data: str = "synthetic"
    root: str | None = None
    height: int = 384
    width: int = 128
    ids_per_batch: int = 16
    images_per_id: int = 4
    cutout: bool = True
    random_erasing: bool = False
    skip_bad_images: bool = False
    workers: int = 4
    model: str = "pmm"
    backbone: str = "resnet50"
    pretrained: str | None = None
    feature_dim: int = 512
    block_size: tuple[int, int] | None = None
    num_blocks: int = 3
    cam: str = "fast"
    mix: str = "a_hard_mix"
    mix_after: str | None = None  # baseline: the backbone module whose output the layer mixes
    epochs: int = 400
    lr: float = 1e-3
    weight_decay: float = 5e-4
    margin: float | None = None  # soft-margin triplet loss
    seed: int = 0
    amp: str = "bf16"
    device: str | None = None  # cuda if available, else cpu
    eval_every: int = 40
    checkpoint_every: int = 1
    checkpoint_every_steps: int | None = None  # also within an epoch, every N optimizer steps
    checkpoint_every_minutes: float | None = None  # also within an epoch, every M minutes
    output_dir: str | None = None
    sync_bn: bool = False
    compile: bool = False
    channels_last: bool = False
    tensorboard: bool = True  # event files in <output_dir>/tensorboard (rank 0)
    preempt_signal: str = "SIGUSR1"  # a scheduler's warning, handled as SIGTERM; "none": off
    num_classes: int | None = None

    def __post_init__(self) -> None:
        block = self.block_size
        if block is None:
            block = (max(1, round(3 * self.height / 384)), max(1, round(2 * self.width / 128)))
        if isinstance(block, list | tuple):
            object.__setattr__(self, "block_size", tuple(block))
        if self.output_dir is None:
            object.__setattr__(self, "output_dir", f"runs/{self.model}-{self.data}")
        _check(self)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> TrainConfig:
        """The configuration a checkpoint's ``args`` (or a saved study's settings) records.

        Keys written before they existed take their defaults; the old names of
        :data:`RENAMED_OPTIONS` are read as today's (only here: new input must use today's).

        Raises:
            ConfigError: an unknown key, or a value the checks reject.
        """
        values = upgrade_saved_config(saved)
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        _need(not unknown, f"unknown options {unknown}; valid: {sorted(DEFAULTS)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain data (JSON and ``torch.load(weights_only=True)``)."""
        values = dataclasses.asdict(self)
        values["block_size"] = list(self.block_size or ())
        return values

    def trains_otherwise(self, other: TrainConfig) -> list[str]:
        """The options, not :data:`RUNTIME_OPTIONS`, whose values differ in ``other``: what
        makes it another run rather than this one continued elsewhere or for longer."""
        return [
            key
            for key in DEFAULTS
            if key not in RUNTIME_OPTIONS and getattr(self, key) != getattr(other, key)
        ]

    def model_options(self) -> dict[str, Any]:
        """The :func:`pmm_model.build_model` keyword options this configuration records.

        Every field that names a parameter of the network's class is passed, unless its value
        is None (the class default). So a new network option needs only its field here (and a
        flag in :mod:`pmm_model.cli.train`), and a checkpoint written before the option existed
        gets the class default.

        Example:
            >>> TrainConfig(model="baseline", backbone="resnet18").model_options()["backbone"]
            'resnet18'
            >>> sorted(TrainConfig(model="baseline").model_options())  # the layer's options too
            ['backbone', 'height', 'mix', 'num_blocks', 'width']
        """
        parameters = inspect.signature(MODELS[self.model]).parameters
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name in parameters
            and f.name != "num_classes"
            and getattr(self, f.name) is not None
        }


# The paper's setting: every option's default (``num_classes`` is not an option).
DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in fields(TrainConfig) if f.name != "num_classes"
}

# Named defaults that explicit options override.
PRESETS: dict[str, dict[str, Any]] = {
    # From scratch on 2 CPU cores in under two minutes (synthetic set, no pretrained weights).
    # 128x64 input gives the paper's 8x4 block grid (1x1 blocks on the 8x4 map) and
    # num_blocks = 3, so each stage mixes 3/32 of the map, the paper's 18/192. Six epochs of the
    # scaled schedule leave two at the full rate, hence the doubled base rate.
    "demo": {
        "data": "synthetic",
        "backbone": "resnet18",
        "height": 128,
        "width": 64,
        "ids_per_batch": 8,
        "images_per_id": 4,
        "epochs": 6,
        "lr": 2e-3,
        "eval_every": 6,
        "workers": 1,
    },
}

# Options that may differ on --resume without changing what is being trained (where and how
# fast it runs, how often it is evaluated, how far it goes). Everything else comes from the
# checkpoint. A changed ``epochs`` rescales the learning-rate schedule (see pmm_model.run.engine).
RUNTIME_OPTIONS = (
    "epochs", "eval_every", "checkpoint_every", "checkpoint_every_steps",
    "checkpoint_every_minutes", "device", "workers", "output_dir", "root", "amp",
    "skip_bad_images", "compile", "channels_last", "sync_bn", "tensorboard",
    "preempt_signal",
)  # fmt: skip


# Signals a scheduler may send ahead of a pre-emption, handled as SIGTERM (or "none").
PREEMPT_SIGNALS = ("SIGUSR1", "SIGUSR2", "none")


# Keys renamed since checkpoints and study.json files were first written (old -> new): ``k`` also
# meant the op's num_blocks, so the P x K sampler's sizes are spelled out.
RENAMED_OPTIONS = {"p": "ids_per_batch", "k": "images_per_id"}


def upgrade_saved_config(saved: dict[str, Any]) -> dict[str, Any]:
    """A configuration saved under older key names (:data:`RENAMED_OPTIONS`), under today's.

    Example:
        >>> upgrade_saved_config({"p": 8, "k": 4, "epochs": 6})
        {'ids_per_batch': 8, 'images_per_id': 4, 'epochs': 6}
    """
    return {RENAMED_OPTIONS.get(key, key): value for key, value in saved.items()}


def feature_map_size(height: int, width: int) -> tuple[int, int]:
    """The trunk's output map for an input (:func:`pmm_model.nets.backbones.build_backbone`).

    Four stride-2 steps (conv1, max-pool, layer2, layer3; layer4 has stride 1), each rounding
    up.

    Example:
        >>> feature_map_size(384, 128), feature_map_size(128, 64)
        ((24, 8), (8, 4))
    """
    for _ in range(4):
        height, width = (height + 1) // 2, (width + 1) // 2
    return height, width


def _need(ok: bool, message: str, option: str | None = None) -> None:
    if not ok:
        raise ConfigError(message, option)


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _check(config: TrainConfig) -> None:
    """Check every option the run will use, before any data is read.

    Besides each value's own range this checks what the network can do with the input: the
    trunk's feature map (:func:`feature_map_size`) must hold a PMM block, and ``num_blocks``
    must not exceed the blocks of that map.
    """
    _need(config.model in MODELS, f"must be one of {sorted(MODELS)}, got {config.model!r}", "model")
    _need(
        config.preempt_signal in PREEMPT_SIGNALS,
        f"must be one of {', '.join(PREEMPT_SIGNALS)}, got {config.preempt_signal!r}",
        "preempt_signal",
    )
    _check_network(config)
    for key in (
        "height",
        "width",
        "ids_per_batch",
        "images_per_id",
        "epochs",
        "eval_every",
        "checkpoint_every",
        "workers",
        "seed",
        "feature_dim",
        "num_blocks",
    ):
        value, (low, high) = getattr(config, key), LIMITS[key]
        _need(
            _is_int(value, low) and value <= high,
            f"must be an integer in [{low}, {high}], got {value!r}",
            key,
        )
    steps, (low, high) = config.checkpoint_every_steps, LIMITS["checkpoint_every_steps"]
    _need(
        steps is None or (_is_int(steps, low) and steps <= high),
        f"must be an integer in [{low}, {high}], got {steps!r}",
        "checkpoint_every_steps",
    )
    optional = ("margin", "checkpoint_every_minutes")
    for key, positive in (
        ("lr", True),
        ("weight_decay", False),
        ("margin", True),
        ("checkpoint_every_minutes", True),
    ):
        value = getattr(config, key)
        if key in optional and value is None:
            continue
        _need(
            isinstance(value, int | float)
            and math.isfinite(value)
            and (value > 0 if positive else value >= 0),
            f"must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}",
            key,
        )
    _need(config.cam in CAM_MODES, f"must be one of {CAM_MODES}, got {config.cam!r}", "cam")
    _need(config.mix in MIX_MODES, f"must be one of {MIX_MODES}, got {config.mix!r}", "mix")
    _need(
        config.num_classes is None or _is_int(config.num_classes, 1),
        f"must be an integer >= 1, got {config.num_classes!r}",
        "num_classes",
    )
    if config.model == "pmm":
        _check_blocks(config)


def _check_network(config: TrainConfig) -> None:
    """The backbone, and where the mixing happens: PMM's own stages or the baseline's layer."""
    if is_timm_backbone(config.backbone):
        _need(
            config.model == "baseline",
            f"{config.backbone} is a timm backbone, which only --model baseline takes (PMM's "
            f"stages are built on torchvision ResNets: {', '.join(sorted(BACKBONES))})",
            "backbone",
        )
        problem = timm_backbone_problem(config.backbone)
        _need(problem is None, str(problem), "backbone")
    else:
        _need(
            config.backbone in BACKBONES,
            f"must be one of {sorted(BACKBONES)} or timm/<a timm model name>, "
            f"got {config.backbone!r}",
            "backbone",
        )
    if config.mix_after is None:
        return
    _need(
        config.model == "baseline",
        "is for --model baseline (PMM mixes at its own stages 2 and 3; --mix picks the mode)",
        "mix_after",
    )
    _need(
        config.mix != "none",
        "needs a mode to mix with: give --mix (one of the feature-mix modes), not 'none'",
        "mix_after",
    )


def _check_blocks(config: TrainConfig) -> None:
    block = config.block_size
    _need(
        isinstance(block, tuple) and len(block) == 2 and all(_is_int(b, 1) for b in block),
        f"must be two integers >= 1, got {block!r}",
        "block_size",
    )
    assert block is not None  # for mypy: checked just above
    map_h, map_w = feature_map_size(config.height, config.width)
    _need(
        block[0] <= map_h and block[1] <= map_w,
        f"{block[0]} {block[1]} does not fit the {map_h}x{map_w} feature map of a "
        f"{config.height}x{config.width} input",
        "block_size",
    )
    rows, cols = block_grid(map_h, map_w, block)
    _need(
        config.num_blocks <= rows * cols,
        f"must be <= {rows * cols} (the {rows}x{cols} grid of {block[0]}x{block[1]} "
        f"blocks on the {map_h}x{map_w} feature map of a {config.height}x"
        f"{config.width} input), got {config.num_blocks}",
        "num_blocks",
    )


def make_config(options: dict[str, Any] | None = None, preset: str | None = None) -> TrainConfig:
    """Defaults, then ``preset``, then ``options``; derived values filled in and checked.

    Args:
        options: option -> value, keys of :data:`DEFAULTS` (None values mean "default").
        preset: a key of :data:`PRESETS`.

    Raises:
        ConfigError: an unknown option or preset, or a value the checks reject.
    """
    options = options or {}
    unknown = sorted(set(options) - set(DEFAULTS))
    _need(not unknown, f"unknown options {unknown}; valid: {sorted(DEFAULTS)}")
    _need(
        preset is None or preset in PRESETS, f"unknown preset {preset!r}; valid: {sorted(PRESETS)}"
    )
    given = {k: v for k, v in options.items() if v is not None}
    config = TrainConfig(**{**PRESETS.get(preset or "", {}), **given})
    _check_mix_after(config)
    return config


def _check_mix_after(config: TrainConfig) -> None:
    """The module ``mix_after`` names exists in the backbone: the network is built on the meta
    device (its structure alone, no weights, no memory) before any data is read, rather than
    after the data gave its class count."""
    if config.mix_after is None:
        return
    try:
        with torch.device("meta"):
            build_model(config.model, 1, **(config.model_options() | {"pretrained": None}))
    except ValueError as err:
        raise ConfigError(str(err), "mix_after") from None


def _same(a: Any, b: Any) -> bool:
    """Equal, a list and a tuple of the same items included (``block_size``)."""
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return tuple(a) == tuple(b)
    return bool(a == b)


def resume_config(
    saved: TrainConfig, explicit: dict[str, Any], checkpoint_dir: str, preset: str | None = None
) -> tuple[TrainConfig, list[IgnoredOption]]:
    """The configuration of a resumed run, and the options given that could not change.

    The checkpoint's configuration, with the :data:`RUNTIME_OPTIONS` given in ``explicit``
    replacing it; other explicit options that differ (and a preset) are ignored and returned.
    The output folder defaults to the checkpoint's, the device to this machine's default.

    Args:
        saved: the checkpoint's configuration.
        explicit: options given for this run (only those the user set).
        checkpoint_dir: the folder holding the checkpoint.
        preset: a preset given for this run (ignored: the checkpoint keeps its options).

    Raises:
        ConfigError: an unknown option, or a runtime option the resumed run cannot use.
    """
    unknown = sorted(set(explicit) - set(DEFAULTS))
    _need(not unknown, f"unknown options {unknown}; valid: {sorted(DEFAULTS)}")
    ignored = [IgnoredOption("preset", None, preset)] if preset is not None else []
    ignored += [
        IgnoredOption(key, getattr(saved, key), value)
        for key, value in explicit.items()
        if key not in RUNTIME_OPTIONS and not _same(getattr(saved, key), value)
    ]
    runtime = {key: value for key, value in explicit.items() if key in RUNTIME_OPTIONS}
    runtime.setdefault("device", None)
    runtime.setdefault("output_dir", checkpoint_dir)
    return dataclasses.replace(saved, **runtime), ignored
