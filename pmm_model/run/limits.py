"""The hard bounds of the integer options: one table for the command lines and the checks.

The command lines refuse a value outside its range when the arguments are parsed
(:func:`pmm_model.cli.args.bounded`), and :class:`pmm_model.run.config.TrainConfig` refuses it
when a configuration is built, a checkpoint's ``args`` included, so an absurd value never
reaches an allocation. The bounds are far beyond any re-identification setting (the paper
trains 384x128 inputs, 16 identities x 4 images); whether a run within them fits the machine is
the memory estimate's question (:func:`pmm_model.data.loaders.check_batch_fits`).

This module imports nothing, so the console scripts can read it before torch loads.

Example:
    >>> LIMITS["height"]
    (16, 4096)
"""

from __future__ import annotations

__all__ = ["LIMITS", "SEED_MAX"]

# The largest seed: numpy's legacy and torch's generators both take [0, 2**32 - 1].
SEED_MAX = 2**32 - 1

# option -> (lowest, highest), both allowed. Training options by their configuration key; the
# evaluation and extraction ``batch_size`` shares the table.
LIMITS: dict[str, tuple[int, int]] = {
    "height": (16, 4096),
    "width": (8, 4096),
    "ids_per_batch": (2, 4096),
    "images_per_id": (1, 1024),
    "batch_size": (1, 65536),
    "workers": (0, 256),
    "feature_dim": (1, 65536),
    "num_blocks": (1, 65536),
    "epochs": (1, 1_000_000),
    "eval_every": (1, 1_000_000),
    "checkpoint_every": (1, 1_000_000),
    "checkpoint_every_steps": (1, 1_000_000_000),
    "seed": (0, SEED_MAX),
}
