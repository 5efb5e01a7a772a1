"""The tiny synthetic set the end-to-end tests train on, and the options of a run on it."""

from __future__ import annotations

from pathlib import Path

from pmm_model.data.synthetic import ensure_synthetic

# 6 training ids x 2 cameras x 2 images: with P=2, K=4, three batches of 8 per epoch.
TINY_SET = {
    "num_train_ids": 6,
    "num_test_ids": 3,
    "num_cameras": 2,
    "images_per_id_per_camera": 2,
    "height": 64,
    "width": 32,
    "num_distractors": 2,
}


def tiny_synthetic_set(folder: Path, **changes: int) -> Path:
    """The tiny set written under ``folder`` (``changes`` override TINY_SET's numbers)."""
    return ensure_synthetic(folder, **{**TINY_SET, **changes})


def tiny_run_options(root: Path) -> dict:
    """run_training's options for one quick CPU epoch of PMM on the tiny set at ``root``."""
    return {
        "data": "folder",
        "root": str(root),
        "backbone": "resnet18",
        "height": 64,
        "width": 32,
        "ids_per_batch": 2,
        "images_per_id": 4,
        "block_size": [1, 1],
        "epochs": 1,
        "eval_every": 1,
        "workers": 0,
        "device": "cpu",
    }
