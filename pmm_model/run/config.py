"""Training configuration: defaults, presets, checks, and the merge on resume.

A configuration is a plain dict (JSON-serialisable, stored as a checkpoint's ``args``) with the
keys of :data:`DEFAULTS` plus ``num_classes`` once the data is known. Build one with
:func:`make_config`; continue a checkpoint's with :func:`resume_config`.

Example:
    >>> config = make_config({"epochs": 2}, preset="demo")
    >>> config["backbone"], config["epochs"], config["block_size"]
    ('resnet18', 2, [1, 1])
"""

from __future__ import annotations

import inspect
import math
from typing import Any

from pmm_kernels.ops.reference import block_grid
from pmm_model.nets.models import BACKBONES, CAM_MODES, MIX_MODES, MODELS

__all__ = [
    "DEFAULTS",
    "PRESETS",
    "RENAMED_OPTIONS",
    "RUNTIME_OPTIONS",
    "ConfigError",
    "check_config",
    "feature_map_size",
    "make_config",
    "model_options",
    "resume_config",
    "upgrade_saved_config",
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


# The paper's setting; None means "decided later" (see make_config).
DEFAULTS: dict[str, Any] = {
    "data": "synthetic",
    "root": None,
    "height": 384,
    "width": 128,
    "ids_per_batch": 16,
    "images_per_id": 4,
    "cutout": True,
    "random_erasing": False,
    "skip_bad_images": False,
    "workers": 4,
    "model": "pmm",
    "backbone": "resnet50",
    "pretrained": None,
    "feature_dim": 512,
    "block_size": None,  # (3, 2) scaled from 384x128 to the input
    "num_blocks": 3,
    "cam": "fast",
    "mix": "a_hard_mix",
    "epochs": 400,
    "lr": 1e-3,
    "weight_decay": 5e-4,
    "margin": None,  # soft-margin triplet loss
    "seed": 0,
    "amp": "bf16",
    "device": None,  # cuda if available, else cpu
    "eval_every": 40,
    "checkpoint_every": 1,
    "output_dir": None,  # runs/<model>-<data>
    "sync_bn": False,
    "compile": False,
    "channels_last": False,
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
    "epochs", "eval_every", "checkpoint_every", "device", "workers", "output_dir", "root", "amp",
    "skip_bad_images", "compile", "channels_last", "sync_bn",
)  # fmt: skip


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
    """The trunk's output map for an input, as :func:`pmm_model.nets.models.build_backbone` gives.

    Four stride-2 steps (conv1, max-pool, layer2, layer3; layer4 has stride 1), each rounding
    up.

    Example:
        >>> feature_map_size(384, 128), feature_map_size(128, 64)
        ((24, 8), (8, 4))
    """
    for _ in range(4):
        height, width = (height + 1) // 2, (width + 1) // 2
    return height, width


def model_options(config: dict[str, Any]) -> dict[str, Any]:
    """The :func:`pmm_model.build_model` keyword options a configuration records.

    Every configuration key that names a parameter of the network's class is passed, unless
    its value is None (the class default). So a new network option needs only its key in
    :data:`DEFAULTS` (and a flag in :mod:`pmm_model.cli.train`), and a checkpoint written
    before the option existed gets the class default.

    Example:
        >>> model_options({"model": "baseline", "backbone": "resnet18", "pretrained": None,
        ...                "cam": "fast"})
        {'backbone': 'resnet18'}
    """
    parameters = inspect.signature(MODELS[config["model"]]).parameters
    options = {
        key: value
        for key, value in config.items()
        if key in parameters and key != "num_classes" and value is not None
    }
    if "block_size" in options:
        options["block_size"] = tuple(options["block_size"])
    return options


def _need(ok: bool, message: str, option: str | None = None) -> None:
    if not ok:
        raise ConfigError(message, option)


def _refuse_old_names(options: dict[str, Any]) -> None:
    renamed = sorted(RENAMED_OPTIONS.keys() & options.keys())
    _need(
        not renamed,
        "; ".join(f"option {old!r} is now called {RENAMED_OPTIONS[old]!r}" for old in renamed)
        + " (checkpoints written under the old names are still read)",
        renamed[0] if renamed else None,
    )


def _positive_int(config: dict[str, Any], key: str, low: int = 1) -> None:
    value = config[key]
    _need(
        isinstance(value, int) and not isinstance(value, bool) and value >= low,
        f"must be an integer >= {low}, got {value!r}",
        key,
    )


def check_config(config: dict[str, Any]) -> None:
    """Check every option the run will use, before any data is read.

    Besides each value's own range this checks what the network can do with the input: the
    trunk's feature map (:func:`feature_map_size`) must hold a PMM block, and ``num_blocks``
    must not exceed the blocks of that map.

    Raises:
        ConfigError: for the first bad option (``option``), with its value.
    """
    _need(
        config["model"] in MODELS,
        f"must be one of {sorted(MODELS)}, got {config['model']!r}",
        "model",
    )
    _need(
        config["backbone"] in BACKBONES,
        f"must be one of {sorted(BACKBONES)}, got {config['backbone']!r}",
        "backbone",
    )
    for key, low in (
        ("height", 16),
        ("width", 8),
        ("ids_per_batch", 2),
        ("images_per_id", 1),
        ("epochs", 1),
        ("eval_every", 1),
        ("checkpoint_every", 1),
        ("workers", 0),
        ("seed", 0),
        ("feature_dim", 1),
        ("num_blocks", 1),
    ):
        _positive_int(config, key, low)
    for key, positive in (("lr", True), ("weight_decay", False), ("margin", True)):
        value = config[key]
        if key == "margin" and value is None:
            continue
        _need(
            isinstance(value, int | float)
            and math.isfinite(value)
            and (value > 0 if positive else value >= 0),
            f"must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}",
            key,
        )
    _need(config["cam"] in CAM_MODES, f"must be one of {CAM_MODES}, got {config['cam']!r}", "cam")
    _need(config["mix"] in MIX_MODES, f"must be one of {MIX_MODES}, got {config['mix']!r}", "mix")
    if config["model"] != "pmm":
        return
    block = config["block_size"]
    _need(
        isinstance(block, list | tuple)
        and len(block) == 2
        and all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in block),
        f"must be two integers >= 1, got {block!r}",
        "block_size",
    )
    map_h, map_w = feature_map_size(config["height"], config["width"])
    _need(
        block[0] <= map_h and block[1] <= map_w,
        f"{block[0]} {block[1]} does not fit the {map_h}x{map_w} feature map of a "
        f"{config['height']}x{config['width']} input",
        "block_size",
    )
    rows, cols = block_grid(map_h, map_w, tuple(block))
    _need(
        config["num_blocks"] <= rows * cols,
        f"must be <= {rows * cols} (the {rows}x{cols} grid of {block[0]}x{block[1]} "
        f"blocks on the {map_h}x{map_w} feature map of a {config['height']}x"
        f"{config['width']} input), got {config['num_blocks']}",
        "num_blocks",
    )


def make_config(options: dict[str, Any] | None = None, preset: str | None = None) -> dict[str, Any]:
    """Defaults, then ``preset``, then ``options``; derived values filled in and checked.

    Args:
        options: option -> value, keys of :data:`DEFAULTS` (None values mean "default"); the
            old names of :data:`RENAMED_OPTIONS` are refused, naming today's.
        preset: a key of :data:`PRESETS`.

    Raises:
        ConfigError: an unknown option or preset, or a value :func:`check_config` rejects.
    """
    options = dict(options or {})
    _refuse_old_names(options)
    unknown = sorted(set(options) - set(DEFAULTS))
    _need(not unknown, f"unknown options {unknown}; valid: {sorted(DEFAULTS)}")
    _need(
        preset is None or preset in PRESETS, f"unknown preset {preset!r}; valid: {sorted(PRESETS)}"
    )
    config = {
        **DEFAULTS,
        **PRESETS.get(preset or "", {}),
        **{k: v for k, v in options.items() if v is not None},
    }
    if config["block_size"] is None:
        config["block_size"] = [
            max(1, round(3 * config["height"] / 384)),
            max(1, round(2 * config["width"] / 128)),
        ]
    config["block_size"] = list(config["block_size"])
    if config["output_dir"] is None:
        config["output_dir"] = f"runs/{config['model']}-{config['data']}"
    check_config(config)
    return config


def resume_config(
    saved: dict[str, Any], explicit: dict[str, Any], checkpoint_dir: str
) -> tuple[dict[str, Any], list[str]]:
    """The configuration of a resumed run, and notes on options that could not change.

    The checkpoint's configuration, with the :data:`RUNTIME_OPTIONS` given in ``explicit``
    replacing it; other explicit options that differ are ignored (and named in the notes).
    The output folder defaults to the checkpoint's, the device to this machine's default.

    Args:
        saved: the checkpoint's ``args``.
        explicit: options given for this run (only those the user set).
        checkpoint_dir: the folder holding the checkpoint.

    Raises:
        ConfigError: a runtime option the resumed run cannot use.
    """
    _refuse_old_names(explicit)
    config = {**DEFAULTS, "block_size": saved.get("block_size"), **saved}
    notes = []
    for key, value in explicit.items():
        if key in RUNTIME_OPTIONS:
            config[key] = value
        elif saved.get(key) != value:
            notes.append(
                f"resuming keeps the checkpoint's {key}={saved.get(key)!r}; "
                f"ignoring {key}={value!r}"
            )
    if "device" not in explicit:
        config["device"] = None
    if "output_dir" not in explicit:
        config["output_dir"] = checkpoint_dir
    check_config(config)
    return config, notes
