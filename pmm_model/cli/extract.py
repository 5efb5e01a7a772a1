"""Embed images with a trained checkpoint: ``pmm-extract`` (or ``python -m pmm_model.cli.extract``).

Examples:
    A folder (recursively) or a list file (``<path> [<pid> <camid>]`` per line)::

        pmm-extract --checkpoint runs/pmm-synthetic/checkpoint.pt --images photos/ --out f.npz

    A split of a dataset, with its pids and camids::

        pmm-extract --checkpoint ckpt.pt --data market1501 --root /data --split query --out q.npz

Writes a ``.npz`` with ``features`` (float32, L2-normalised unless ``--no-normalize``),
``names``, ``skipped`` and, where the layout names them, ``pids`` and ``camids``; the features
are those evaluation computes (same preprocessing, same ``--flip`` averaging). Exit status: 0
done, 2 bad arguments or input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pmm_model.apps.extract import ExtractedFeatures, FeatureExtractor
from pmm_model.cli.args import bounded, existing_file, output_file
from pmm_model.cli.scripts import program_name
from pmm_model.data.datasets import build_dataset, dataset_names
from pmm_model.run.runtime import resolve_device

__all__ = ["build_parser", "main"]

PROG = program_name("extract")
SPLITS = ("query", "gallery", "train")


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Embed images with a trained checkpoint (PMM or baseline), exactly as "
        "evaluation does, into a .npz of features, names and (where known) pids and camids.",
    )
    parser.add_argument(
        "--checkpoint", required=True, type=existing_file, help="checkpoint.pt from training"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--images",
        help="a folder of images (searched recursively) or a list file, one "
        "'<path> [<pid> <camid>]' per line, paths relative to the list file (quote a path "
        "with spaces, or separate the fields with tabs)",
    )
    source.add_argument("--data", choices=dataset_names(), help="a dataset's split instead")
    parser.add_argument("--root", help="dataset root for --data (synthetic: optional)")
    parser.add_argument("--split", choices=SPLITS, help="split of --data (default: query)")
    parser.add_argument(
        "--out",
        required=True,
        type=npz_output,
        help="the .npz file to write (checked for writing before the extraction)",
    )
    parser.add_argument(
        "--flip", action="store_true", help="average with the flipped images' features"
    )
    parser.add_argument(
        "--no-normalize",
        action="store_true",
        help="keep evaluation's raw features instead of L2-normalising them",
    )
    parser.add_argument(
        "--batch-size",
        type=bounded("batch_size"),
        default=64,
        help="images per batch (default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=bounded("workers"),
        default=2,
        help="loader processes (default: %(default)s)",
    )
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--amp", action="store_true", help="float16 autocast (CUDA only)")
    parser.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave out images that cannot be decoded (named in the output) instead of "
        "stopping at the first one",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def refuse_data_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse ``--root`` and ``--split`` without ``--data``: they would be ignored."""
    for flag, value in (("--root", args.root), ("--split", args.split)):
        if value is not None and args.data is None:
            parser.error(f"argument {flag}: only with --data")


def npz_output(text: str) -> Path:
    """An argparse ``type``: a writable ``.npz`` path (checked before any work)."""
    if not text.endswith(".npz"):
        raise argparse.ArgumentTypeError(f"must end in .npz, got {text!r}")
    return Path(output_file(text))


def _report(result: ExtractedFeatures, out: Path) -> str:
    lines = [
        f"wrote {out}: {len(result.names)} embeddings of dim {result.features.shape[1]} "
        f"(normalised: {'yes' if result.normalized else 'no'}, "
        f"flip: {'on' if result.flip else 'off'}, "
        f"pids/camids: {'yes' if result.pids is not None else 'no'})"
    ]
    if result.skipped:
        lines.append(
            f"skipped {len(result.skipped)} unreadable images: {', '.join(result.skipped)}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> ExtractedFeatures:
    """Run the CLI; returns what it wrote."""
    parser = build_parser()
    args = parser.parse_args(argv)
    refuse_data_options(parser, args)
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        parser.error(f"argument --device: {err}")
    if args.amp and device.type != "cuda":
        parser.error(f"argument --amp: float16 autocast needs a CUDA device, got {str(device)!r}")

    def fail(message: str) -> None:
        parser.exit(2, f"{PROG}: error: {message}\n")

    try:
        extractor = FeatureExtractor(
            args.checkpoint,
            device=device,
            flip=args.flip,
            amp=args.amp,
            batch_size=args.batch_size,
            workers=args.workers,
            normalize=not args.no_normalize,
            progress=not args.no_progress,
        )
        if args.data is not None:
            images = getattr(build_dataset(args.data, args.root), args.split or "query")
        else:
            images = args.images
        result = extractor.extract(images, skip_bad_images=args.skip_bad_images)
    except (FileNotFoundError, ValueError, TypeError) as err:
        fail(str(err))
    except OSError as err:
        # A loader worker's error arrives with the worker's traceback; its last line names it.
        fail(f"{str(err).strip().splitlines()[-1]} (--skip-bad-images leaves such images out)")
    try:
        result.save(args.out)
    except OSError as err:  # a full disk, a file-size limit: the previous file is kept
        parser.exit(1, f"{PROG}: error: {err.strerror or err}\n")
    print(_report(result, args.out), file=sys.stdout)
    return result


if __name__ == "__main__":
    main()
