"""Export a checkpoint to ONNX, checked by onnxruntime: ``pmm-export``.

Also ``python -m pmm_model.cli.export``.

Example:
    pmm-export --checkpoint runs/pmm-synthetic/checkpoint.pt --out model.onnx --images photos/

Exports the eval-mode network (images -> embeddings, dynamic batch) with the input size,
mean/std, embedding size and model kind in the ONNX metadata, then compares onnxruntime with
PyTorch at batch 1 and 7 on random images and on the first seven ``--images`` (or of
``--data``'s ``--split``), and prints the figures. Exit status: 0 exported and within tolerance,
1 parity failed (an earlier ``--out`` is kept; the graph is kept as ``<out>.rejected``),
2 bad arguments or a missing ``deploy`` extra.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from pmm_model.apps.export import ExportReport, ParityError, check_opset, export_onnx
from pmm_model.cli.args import existing_file, int_at_least, output_file
from pmm_model.cli.extract import SPLITS, refuse_data_options
from pmm_model.cli.scripts import program_name
from pmm_model.data.datasets import build_dataset, dataset_names

__all__ = ["build_parser", "main"]

PROG = program_name("export")


def onnx_output(text: str) -> Path:
    """An argparse ``type``: a writable ``.onnx`` path (checked before any work)."""
    if not text.endswith(".onnx"):
        raise argparse.ArgumentTypeError(f"must end in .onnx, got {text!r}")
    return Path(output_file(text))


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Export a checkpoint's eval-mode network to ONNX and check it against "
        "PyTorch with onnxruntime (needs pip install 'pmm[deploy]').",
    )
    parser.add_argument(
        "--checkpoint", required=True, type=existing_file, help="checkpoint.pt from training"
    )
    parser.add_argument(
        "--out",
        required=True,
        type=onnx_output,
        help="the .onnx file to write (checked for writing before the export)",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--images",
        help="real images for the parity check: a folder or a list file (first seven used)",
    )
    source.add_argument("--data", choices=dataset_names(), help="or a dataset's split")
    parser.add_argument("--root", help="dataset root for --data (synthetic: optional)")
    parser.add_argument("--split", choices=SPLITS, help="split of --data (default: query)")
    parser.add_argument(
        "--opset", type=int_at_least(18), help="ONNX opset (default: the exporter's)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> ExportReport:
    """Run the CLI; returns the export's report."""
    parser = build_parser()
    args = parser.parse_args(argv)
    refuse_data_options(parser, args)
    try:
        check_opset(args.opset)
    except ValueError as err:
        parser.error(f"argument --opset: {err}")
    except ImportError:
        pass  # export_onnx names the missing extra
    try:
        real = (
            getattr(build_dataset(args.data, args.root), args.split or "query")
            if args.data is not None
            else args.images
        )
        report = export_onnx(args.checkpoint, args.out, real_images=real, opset=args.opset)
    except ParityError as err:
        parser.exit(1, f"{PROG}: error: {err}\n")
    except (ImportError, FileNotFoundError, ValueError, TypeError, OSError) as err:
        parser.exit(2, f"{PROG}: error: {err}\n")
    print(report.summary())
    if real is None:
        print("  (no --images or --data: checked on random images only)")
    return report


if __name__ == "__main__":
    main()
