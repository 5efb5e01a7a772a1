"""Train a PMM or baseline re-identification network: ``python -m pmm_model.train``.

Examples:
    The small CPU demo (synthetic data, resnet18 at 128x64, about 3.5 minutes on 2 cores)::

        python -m pmm_model.train --preset demo
        python -m pmm_model.train --preset demo --model baseline

    The paper's setting on Market-1501::

        python -m pmm_model.train --data market1501 --root /data --pretrained imagenet

    Continue an interrupted run exactly where its last checkpoint left it::

        python -m pmm_model.train --resume runs/pmm-market1501/checkpoint.pt

Each run writes ``train.log``, ``metrics.json`` (one entry per evaluation) and
``checkpoint.pt`` (at every evaluation and at the end) into ``--output-dir``.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pmm_model.checkpoint import (
    atomic_write,
    load_checkpoint,
    model_options,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from pmm_model.cli import int_at_least
from pmm_model.data.datasets import ImageDataset, build_dataset, dataset_names
from pmm_model.data.sampler import PKSampler
from pmm_model.data.transforms import build_transforms
from pmm_model.evaluation import evaluate
from pmm_model.losses import PMMLoss
from pmm_model.models import BACKBONES, CAM_MODES, MODELS, build_model

__all__ = [
    "DEFAULTS",
    "PRESETS",
    "build_parser",
    "lr_factor",
    "main",
    "parse_args",
    "train_one_epoch",
]

logger = logging.getLogger("pmm_model.train")

# Explicit command-line flags override a preset's values.
PRESETS: dict[str, dict[str, Any]] = {
    # From scratch on 2 CPU cores in about 3.5 minutes (synthetic set, no pretrained weights).
    # 128x64 input gives the paper's 8x4 block grid (1x1 blocks on the 8x4 map) and k = 3, so
    # each stage mixes 3/32 of the map, the paper's 18/192.
    "demo": {
        "data": "synthetic",
        "backbone": "resnet18",
        "height": 128,
        "width": 64,
        "p": 8,
        "k": 4,
        "epochs": 10,
        "lr": 1e-3,
        "eval_every": 5,
        "workers": 1,
    },
}

# On --resume these come from the command line; everything else from the checkpoint.
RUNTIME_OPTIONS = ("epochs", "eval_every", "device", "workers", "output_dir", "root", "amp")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}


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


_EPILOG = """examples:
  python -m pmm_model.train --preset demo                 # CPU demo, synthetic data
  python -m pmm_model.train --preset demo --model baseline
  python -m pmm_model.train --data market1501 --root /data --pretrained imagenet
  python -m pmm_model.train --resume runs/pmm-market1501/checkpoint.pt
"""


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _existing_file(text: str) -> str:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    return text


def _pretrained(text: str) -> str:
    if text != "imagenet" and not Path(text).is_file():
        raise argparse.ArgumentTypeError(
            f"expected 'imagenet' or the path of a torchvision ResNet state dict, got {text!r} "
            "(no such file)"
        )
    return text


# The paper's setting; None means "decided later" (see the options' help).
DEFAULTS: dict[str, Any] = {
    "preset": None,
    "data": "synthetic",
    "root": None,
    "height": 384,
    "width": 128,
    "p": 16,
    "k": 4,
    "cutout": True,
    "random_erasing": False,
    "skip_bad_images": False,
    "workers": 4,
    "model": "pmm",
    "backbone": "resnet50",
    "pretrained": None,
    "feature_dim": 512,
    "block_size": None,
    "num_blocks": 3,
    "cam": "fast",
    "epochs": 400,
    "lr": 1e-3,
    "weight_decay": 5e-4,
    "margin": None,
    "seed": 0,
    "amp": "bf16",
    "device": None,
    "eval_every": 40,
    "output_dir": None,
    "resume": None,
}


def build_parser(defaults: bool = True) -> argparse.ArgumentParser:
    """The command-line parser.

    Args:
        defaults: fill in :data:`DEFAULTS`; without them the namespace holds only the options
            given on the command line.
    """
    parser = argparse.ArgumentParser(
        prog="python -m pmm_model.train",
        description="Train a PMM or baseline re-identification network.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=None if defaults else argparse.SUPPRESS,
    )
    demo = " ".join(f"--{key.replace('_', '-')} {value}" for key, value in PRESETS["demo"].items())
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help=f"named defaults that explicit options override; demo = {demo}",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--data", choices=dataset_names(), help="dataset (default: %(default)s)")
    data.add_argument("--root", help="dataset root (synthetic: cache folder, optional)")
    data.add_argument(
        "--height", type=int_at_least(16), help="input height (default: %(default)s)"
    )
    data.add_argument("--width", type=int_at_least(8), help="input width (default: %(default)s)")
    data.add_argument(
        "--p", type=int_at_least(2), help="identities per batch, >= 2 (default: %(default)s)"
    )
    data.add_argument(
        "--k", type=int_at_least(1), help="images per identity (default: %(default)s)"
    )
    data.add_argument(
        "--cutout", action=argparse.BooleanOptionalAction, help="Cutout, p=0.5 (default: on)"
    )
    data.add_argument(
        "--random-erasing", action="store_true", help="also torchvision RandomErasing"
    )
    data.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="drop images that cannot be decoded (named and counted in the log) instead of "
        "stopping at the first one",
    )
    data.add_argument(
        "--workers", type=int_at_least(0), help="loader processes (default: %(default)s)"
    )
    model = parser.add_argument_group("model")
    model.add_argument("--model", choices=sorted(MODELS), help="network (default: %(default)s)")
    model.add_argument(
        "--backbone", choices=sorted(BACKBONES), help="torchvision ResNet (default: %(default)s)"
    )
    model.add_argument(
        "--pretrained", type=_pretrained, help="'imagenet' or a torchvision ResNet state dict"
    )
    model.add_argument(
        "--feature-dim",
        type=int_at_least(1),
        help="PMM embedding per stage (default: %(default)s)",
    )
    model.add_argument(
        "--block-size",
        type=int_at_least(1),
        nargs=2,
        metavar=("BH", "BW"),
        help="PMM mixing block in feature cells (default: (3, 2) scaled from 384x128 to the input)",
    )
    model.add_argument(
        "--num-blocks",
        type=int_at_least(1),
        help="PMM blocks mixed per stage (default: %(default)s)",
    )
    model.add_argument(
        "--cam", choices=CAM_MODES, help="PMM Grad-CAM weights (default: %(default)s)"
    )
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int_at_least(1), help="(default: %(default)s)")
    optim.add_argument(
        "--lr",
        type=_positive_float,
        help="base Adam lr, with the paper's warm-up and steps scaled to --epochs "
        "(default: %(default)s)",
    )
    optim.add_argument("--weight-decay", type=float, help="Adam (default: %(default)s)")
    optim.add_argument("--margin", type=_positive_float, help="triplet margin (default: soft)")
    optim.add_argument("--seed", type=int_at_least(0), help="(default: %(default)s)")
    optim.add_argument(
        "--amp",
        choices=AMP_DTYPES,
        help="autocast dtype on CUDA, off on CPU (default: %(default)s)",
    )
    run = parser.add_argument_group("run")
    run.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    run.add_argument(
        "--eval-every",
        type=int_at_least(1),
        help="evaluate and checkpoint every N epochs and at the end (default: %(default)s)",
    )
    run.add_argument("--output-dir", help="default: runs/<model>-<data>, or the --resume folder")
    run.add_argument("--resume", type=_existing_file, help="checkpoint.pt to continue from")
    if defaults:
        parser.set_defaults(**DEFAULTS)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line; a preset's values become defaults.

    With ``--resume`` the checkpoint's options are used, except the runtime options
    (``RUNTIME_OPTIONS``) given explicitly on this command line; the output folder defaults
    to the checkpoint's. Bad values end the program with an argparse error naming the option.
    """
    parser = build_parser()
    preset = parser.parse_known_args(argv)[0].preset
    if preset:
        parser.set_defaults(**PRESETS[preset])
    args = parser.parse_args(argv)
    if args.resume:
        # A parse without defaults tells which options were given explicitly.
        explicit = vars(build_parser(defaults=False).parse_args(argv))
        try:
            saved = dict(load_checkpoint(args.resume)["args"])
        except (ValueError, RuntimeError) as err:
            parser.error(f"argument --resume: {err}")
        for key, value in explicit.items():
            if key not in (*RUNTIME_OPTIONS, "resume") and saved.get(key) != value:
                print(
                    f"note: --resume keeps the checkpoint's {key}={saved.get(key)!r}; "
                    f"ignoring --{key.replace('_', '-')} {value!r}",
                    file=sys.stderr,
                )
        saved.update({k: v for k, v in explicit.items() if k in RUNTIME_OPTIONS})
        saved.setdefault("output_dir", None)
        saved["resume"] = args.resume
        if "device" not in explicit:
            saved["device"] = None
        if "output_dir" not in explicit:
            saved["output_dir"] = str(Path(args.resume).parent)
        args = argparse.Namespace(**saved)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"argument --device: not a torch device: {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"argument --device: {args.device!r} requested but CUDA is not available")
    if args.block_size is None:
        args.block_size = [
            max(1, round(3 * args.height / 384)),
            max(1, round(2 * args.width / 128)),
        ]
    if args.output_dir is None:
        args.output_dir = f"runs/{args.model}-{args.data}"
    return args


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    criterion: PMMLoss,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    desc: str,
) -> float:
    """One pass over ``loader`` with a tqdm bar showing loss and lr; returns the mean loss."""
    model.train()
    total, steps = 0.0, 0
    lr = optimizer.param_groups[0]["lr"]
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)
    for images, pids, _ in bar:
        images = images.to(device, non_blocking=True)
        pids = pids.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss, _ = criterion(model(images, pids), pids)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total, steps = total + loss.item(), steps + 1
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.1e}")
    return total / max(steps, 1)


def _evaluate(model, query_loader, gallery_loader, device):
    # Forked RNG: evaluation (its loaders draw a seed) must not shift the training stream,
    # or a resumed run would differ from an uninterrupted one depending on when it evaluated.
    cuda = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    with torch.random.fork_rng(devices=cuda):
        return evaluate(model, query_loader, gallery_loader, device)


def _setup_logging(output_dir: Path) -> list[logging.Handler]:
    handlers: list[logging.Handler] = [
        logging.FileHandler(output_dir / "train.log"),
        logging.StreamHandler(sys.stdout),
    ]
    # On the package logger, so the data loaders' warnings (skipped images) reach the log too.
    package_logger = logging.getLogger("pmm_model")
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    return handlers


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Run the CLI; returns the final ``{"rank1", "mAP", "mINP"}`` (fractions in [0, 1])."""
    args = parse_args(argv)
    checkpoint = load_checkpoint(args.resume) if args.resume else None
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    handlers = _setup_logging(output_dir)
    try:
        return _run(args, checkpoint, output_dir)
    finally:
        for handler in handlers:
            logging.getLogger("pmm_model").removeHandler(handler)
            handler.close()


def _run(args: argparse.Namespace, checkpoint: dict | None, output_dir: Path) -> dict[str, float]:
    device = torch.device(args.device)
    try:
        data = build_dataset(args.data, args.root)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"error: --data {args.data} --root {args.root}: {err}")
    if checkpoint is None:
        # Seeded after loading the data: generating the synthetic set on first use must not
        # change the run.
        random.seed(args.seed)
        np.random.seed(args.seed)
        torch.manual_seed(args.seed)
    logger.info("%s", data.summary())
    if checkpoint is not None and data.num_train_pids != args.num_classes:
        sys.exit(
            f"error: --resume: the checkpoint was trained on {args.num_classes} identities, "
            f"but {args.data!r} has {data.num_train_pids}"
        )
    args.num_classes = data.num_train_pids
    logger.info("options: %s", json.dumps(vars(args), sort_keys=True))

    options = model_options(vars(args))
    if checkpoint is not None:
        options["pretrained"] = None  # the checkpoint holds every weight
    try:
        model = build_model(args.model, args.num_classes, **options)
    except (ValueError, RuntimeError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    epochs = args.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(e, epochs))
    amp_dtype = AMP_DTYPES[args.amp] if device.type == "cuda" else None
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    criterion = PMMLoss(margin=args.margin)

    start_epoch, metrics = 0, []
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint["scaler"]:  # a run saved without fp16 has an empty scaler state
            scaler.load_state_dict(checkpoint["scaler"])
        start_epoch, metrics = checkpoint["epoch"], list(checkpoint["metrics"])
        set_rng_state(checkpoint["rng"])
        logger.info("resumed from %s after epoch %d", args.resume, start_epoch)

    pin = device.type == "cuda"
    train_set = ImageDataset(
        data.train,
        build_transforms(args.height, args.width, True, args.cutout, args.random_erasing),
        skip_bad=args.skip_bad_images,
    )
    sampler = PKSampler([r.pid for r in data.train], args.p, args.k, seed=args.seed)
    train_loader = DataLoader(
        train_set, batch_sampler=sampler, num_workers=args.workers, pin_memory=pin
    )
    test_tf = build_transforms(args.height, args.width, is_train=False)
    query_loader, gallery_loader = (
        DataLoader(
            ImageDataset(records, test_tf, skip_bad=args.skip_bad_images),
            batch_size=128,
            num_workers=args.workers,
            pin_memory=pin,
        )
        for records in (data.query, data.gallery)
    )

    def evaluate_and_save(epoch: int, seconds: float) -> dict[str, float]:
        result = _evaluate(model, query_loader, gallery_loader, device)
        entry = {
            "epoch": epoch,
            "rank1": float(result.cmc[0]),
            "mAP": float(result.mAP),
            "mINP": float(result.mINP),
            "seconds_per_epoch": seconds,
        }
        metrics.append(entry)
        logger.info(
            "epoch %d: rank-1 %.1f%%  mAP %.1f%%  mINP %.1f%%",
            epoch,
            100 * entry["rank1"],
            100 * entry["mAP"],
            100 * entry["mINP"],
        )
        save_checkpoint(
            output_dir / "checkpoint.pt",
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch,
                "rng": rng_state(),
                "metrics": metrics,
                "args": vars(args),
            },
        )
        atomic_write(output_dir / "metrics.json",
                     lambda f: f.write(json.dumps(metrics, indent=2).encode()))
        return entry

    entry, train_seconds, epochs_timed = None, 0.0, 0
    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch)
        tic = time.perf_counter()
        loss = train_one_epoch(
            model,
            train_loader,
            criterion,
            optimizer,
            scaler,
            device,
            amp_dtype,
            desc=f"epoch {epoch + 1}/{epochs}",
        )
        train_seconds += time.perf_counter() - tic
        epochs_timed += 1
        logger.info(
            "epoch %d/%d: loss %.4f  lr %.2e  %.1fs",
            epoch + 1,
            epochs,
            loss,
            optimizer.param_groups[0]["lr"],
            time.perf_counter() - tic,
        )
        scheduler.step()
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == epochs:
            entry = evaluate_and_save(epoch + 1, train_seconds / epochs_timed)
            train_seconds, epochs_timed = 0.0, 0
    if entry is None:  # resumed from a finished run: nothing left to train
        entry = evaluate_and_save(start_epoch, 0.0)
    print(f"rank-1: {100 * entry['rank1']:.1f}%  mAP: {100 * entry['mAP']:.1f}%")
    return {key: entry[key] for key in ("rank1", "mAP", "mINP")}


if __name__ == "__main__":
    main()
