"""A tiny training run through the train CLI, and what the run-folder tests compare.

The tiny run is the demo preset at 64x32, 2 identities x 2 images a batch, one epoch evaluated at
its end, on a 4-identity folder tree (``tests/e2e/conftest.py``'s ``tree``).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch

from pmm_model.cli import train

RUN_FILES = ("checkpoint.pt", "metrics.json", "train.log")


def tiny_run_argv(root: Path, out: Path, *extra: str) -> list[str]:
    """The train CLI's arguments for the tiny run on ``root``, writing to ``out``."""
    return [
        "--preset", "demo", "--data", "folder", "--root", str(root), "--height", "64",
        "--width", "32", "--ids-per-batch", "2", "--images-per-id", "2", "--feature-dim", "32",
        "--workers", "0", "--epochs", "1", "--eval-every", "1", "--device", "cpu",
        "--output-dir", str(out), *extra,
    ]  # fmt: skip


def run_train(argv: list[str]) -> tuple[int | str | None, str]:
    """``(exit status, stderr)`` of the train CLI (0 when it returns)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            train.main(argv)
            code: int | str | None = 0
        except SystemExit as stop:
            code = stop.code
    return code, err.getvalue()


def last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


def snapshot(folder: Path) -> dict[str, bytes]:
    """The bytes of a run folder's run files."""
    return {name: (folder / name).read_bytes() for name in RUN_FILES}


def fake_run(folder: Path, text: str = "an older run") -> Path:
    """A folder holding run files with ``text`` in each: an older run to protect."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        (folder / name).write_text(text)
    return folder


def load_checkpoint_raw(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def spoil_checkpoint(checkpoint: dict, case: str) -> dict:
    """``checkpoint`` (a raw dict) spoiled in place as ``case`` names; "none" leaves it whole."""
    args, model = checkpoint["args"], checkpoint["model"]
    if case == "other backbone":
        args["backbone"] = "resnet34"
    elif case == "missing weights":
        del model[next(iter(model))]
    elif case == "other class count":
        args["num_classes"] = 7
    elif case == "string height":
        args["height"] = "64"
    elif case == "unknown model":
        args["model"] = "bdb"
    elif case == "nan weights":
        next(t for t in model.values() if t.is_floating_point()).fill_(float("nan"))
    elif case == "no optimizer":
        del checkpoint["optimizer"]
    elif case == "no rng":
        del checkpoint["rng"]
    elif case == "negative batches":
        checkpoint["batches"] = -3
    return checkpoint
