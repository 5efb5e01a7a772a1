"""Train a PMM or baseline re-identification network: ``python -m pmm_model.train``.

Examples:
    The small CPU demo (synthetic data, resnet18 at 128x64, one to two minutes on 2 cores)::

        python -m pmm_model.train --preset demo

    The paper's setting on Market-1501, on one GPU or on 4 GPUs of one machine::

        python -m pmm_model.train --data market1501 --root /data --pretrained imagenet
        torchrun --standalone --nproc-per-node 4 -m pmm_model.train --data market1501 ...

    Continue an interrupted or preempted run exactly where its last checkpoint left it::

        python -m pmm_model.train --resume runs/pmm-market1501/checkpoint.pt

    One command for the first start and every restart (torchrun --max-restarts, a requeue):
    continue the output folder's own checkpoint if there is one, else start::

        python -m pmm_model.train --data market1501 --root /data --resume auto

Each run writes ``train.log``, ``metrics.json`` (one entry per evaluation) and
``checkpoint.pt`` into ``--output-dir``. Exit status: 0 done, 2 bad arguments, 1 a failure
(the message says what was saved), 128 + signal number when SIGTERM/SIGINT stopped the run
after checkpointing.
"""

from __future__ import annotations

import argparse
import errno
import functools
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from pmm_model.cli.args import (
    backbone_name,
    bounded,
    ctrl_c_exits,
    existing_file,
    finite_float,
    int_at_least,
    pretrained_weights,
    unused_option,
)
from pmm_model.cli.scripts import program_name
from pmm_model.data.datasets import dataset_names
from pmm_model.nets.backbones import BACKBONES, WeightsUnavailableError
from pmm_model.nets.models import CAM_MODES, MIX_MODES, MODELS
from pmm_model.run.config import (
    DEFAULTS,
    PREEMPT_SIGNALS,
    PRESETS,
    ConfigError,
    TrainConfig,
    make_config,
)
from pmm_model.run.engine import AMP_DTYPES, Engine, TrainingError, TrainingInterrupted
from pmm_model.run.errors import Words
from pmm_model.run.folder import RunFolderError
from pmm_model.run.runtime import resolve_device

__all__ = ["FlagWords", "build_parser", "flag_name", "main", "parse_args"]

PROG = program_name("train")

_EPILOG = """examples:
  python -m pmm_model.train --preset demo                 # CPU demo, synthetic data
  python -m pmm_model.train --data market1501 --root /data --pretrained imagenet
  torchrun --standalone --nproc-per-node 2 -m pmm_model.train --preset demo
  python -m pmm_model.train --resume runs/pmm-market1501/checkpoint.pt
"""


def _default(key: str) -> str:
    return f"(default: {DEFAULTS[key]})"


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser; the namespace holds only the options given.

    Every long option is spelled out in full, and none is a prefix of a ``torchrun`` option, so
    ``torchrun ... -m pmm_model.train <options>`` passes them all through.
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train a PMM or baseline re-identification network (one process, or one "
        "per device under torchrun).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,
    )
    demo = " ".join(f"{key}={value}" for key, value in PRESETS["demo"].items())
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help=f"named defaults that explicit options override; demo: {demo}",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--data", choices=dataset_names(), help=f"dataset {_default('data')}")
    data.add_argument("--root", help="dataset root (synthetic: cache folder, optional)")
    data.add_argument("--height", type=bounded("height"), help=f"input height {_default('height')}")
    data.add_argument("--width", type=bounded("width"), help=f"input width {_default('width')}")
    data.add_argument(
        "--ids-per-batch",
        type=bounded("ids_per_batch"),
        metavar="P",
        help=f"identities per batch and process, >= 2 {_default('ids_per_batch')}",
    )
    data.add_argument(
        "--images-per-id",
        type=bounded("images_per_id"),
        metavar="K",
        help=f"images per identity {_default('images_per_id')}",
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
        help="drop images that cannot be decoded (named and counted in the log) "
        "instead of stopping at the first one",
    )
    data.add_argument(
        "--workers",
        type=bounded("workers"),
        help=f"loader processes per training process {_default('workers')}",
    )
    model = parser.add_argument_group("model")
    model.add_argument("--model", choices=sorted(MODELS), help=f"network {_default('model')}")
    model.add_argument(
        "--backbone",
        type=backbone_name,
        help=f"torchvision ResNet ({', '.join(sorted(BACKBONES))}) or timm/<timm model name> "
        f"(--model baseline, needs timm) {_default('backbone')}",
    )
    model.add_argument(
        "--pretrained",
        type=pretrained_weights,
        help="'imagenet' (torchvision's or timm's weights) or a state dict of the backbone",
    )
    model.add_argument(
        "--feature-dim",
        type=bounded("feature_dim"),
        help=f"PMM embedding per stage {_default('feature_dim')}",
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
        type=bounded("num_blocks"),
        help=f"PMM blocks mixed per stage {_default('num_blocks')}",
    )
    model.add_argument("--cam", choices=CAM_MODES, help=f"PMM Grad-CAM weights {_default('cam')}")
    model.add_argument(
        "--mix",
        choices=MIX_MODES,
        help=f"feature-mix mode: PMM's stages 2 and 3 ('none' trains the three stages without "
        f"mixing), or the baseline's layer after --mix-after {_default('mix')}",
    )
    model.add_argument(
        "--mix-after",
        metavar="MODULE",
        help="baseline: insert the feature-mix layer after this backbone module (layer3, "
        "blocks.9, stages.2: pmm_kernels.insert_feature_mix's names); default: no mixing",
    )
    model.add_argument(
        "--sync-bn",
        action="store_true",
        help="synchronise BatchNorm statistics across processes (DDP)",
    )
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=bounded("epochs"), help=_default("epochs"))
    optim.add_argument(
        "--lr",
        type=finite_float(0.0),
        help="base Adam lr, with the paper's warm-up and steps scaled to --epochs "
        f"{_default('lr')}",
    )
    optim.add_argument(
        "--weight-decay",
        type=finite_float(0.0, inclusive=True),
        help=f"Adam {_default('weight_decay')}",
    )
    optim.add_argument("--margin", type=finite_float(0.0), help="triplet margin (default: soft)")
    optim.add_argument("--seed", type=bounded("seed"), help=_default("seed"))
    optim.add_argument(
        "--amp", choices=AMP_DTYPES, help=f"autocast dtype on CUDA, off on CPU {_default('amp')}"
    )
    run = parser.add_argument_group("run")
    run.add_argument(
        "--device",
        help="torch device (default: cuda if available, else cpu; "
        "under torchrun cuda means the GPU of the local rank)",
    )
    run.add_argument(
        "--compile", action="store_true", help="torch.compile the network's trunk (the ResNet)"
    )
    run.add_argument(
        "--channels-last",
        action="store_true",
        help="channels_last memory format for the network and images",
    )
    run.add_argument(
        "--eval-every",
        type=bounded("eval_every"),
        help=f"evaluate every N epochs and at the end {_default('eval_every')}",
    )
    run.add_argument(
        "--checkpoint-every",
        type=bounded("checkpoint_every"),
        help="checkpoint every N epochs, before every evaluation and at the end "
        f"{_default('checkpoint_every')}",
    )
    run.add_argument(
        "--checkpoint-every-steps",
        type=bounded("checkpoint_every_steps"),
        metavar="N",
        help="also checkpoint within an epoch once N optimizer steps have passed since the "
        "last checkpoint, at the exact position (a resume is bit-exact) (default: off)",
    )
    run.add_argument(
        "--checkpoint-every-minutes",
        type=finite_float(0.0),
        metavar="M",
        help="also checkpoint within an epoch once M minutes have passed since the last "
        "checkpoint (default: off)",
    )
    run.add_argument(
        "--preempt-signal",
        choices=PREEMPT_SIGNALS,
        help="the signal a scheduler sends before it pre-empts the job (SLURM: "
        "--signal=USR1@90): checkpoint at the end of the step and exit 128 + signal, as for "
        f"SIGTERM; 'none' leaves it alone {_default('preempt_signal')}",
    )
    run.add_argument(
        "--no-tensorboard",
        dest="tensorboard",
        action="store_false",
        help="write no TensorBoard event files (default: <output-dir>/tensorboard, rank 0)",
    )
    run.add_argument(
        "--output-dir", help="default: runs/<model>-<data>, or the --resume checkpoint's folder"
    )
    run.add_argument(
        "--resume",
        type=_checkpoint_or_auto,
        metavar="CHECKPOINT|auto",
        help="'auto': continue --output-dir's own checkpoint if it has one (same options), "
        "else start a new run there: one command for a start and every restart. "
        "Or a checkpoint.pt to continue; only where/how-long options may change: "
        "--epochs (rescales the lr schedule), --eval-every, --checkpoint-every, "
        "--checkpoint-every-steps, --checkpoint-every-minutes, "
        "--device, --workers, --output-dir, --root, --amp, --skip-bad-images, "
        "--compile, --channels-last, --sync-bn, --no-tensorboard, --preempt-signal",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in an --output-dir that holds another run, replacing it",
    )
    return parser


def _checkpoint_or_auto(text: str) -> str:
    return text if text == "auto" else existing_file(text)


def flag_name(key: str) -> str:
    """The command-line flag of configuration ``key`` (``feature_dim`` -> ``--feature-dim``).

    Example:
        >>> flag_name("feature_dim"), flag_name("eval_every")
        ('--feature-dim', '--eval-every')
    """
    return _flags().get(key, f"--{key.replace('_', '-')}")


@functools.cache
def _flags() -> dict[str, str]:
    return {
        action.dest: action.option_strings[0]
        for action in build_parser()._actions
        if action.option_strings and action.option_strings[0].startswith("--")
    }


class FlagWords(Words):
    """The library's wording (:class:`~pmm_model.run.errors.Words`) in this CLI's flags."""

    resuming = "--resume"

    def option(self, key: str) -> str:
        return flag_name(key)

    def setting(self, key: str, value: Any) -> str:
        if value is True:
            return flag_name(key)
        shown = " ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
        return f"{flag_name(key)} {shown}"


WORDS = FlagWords()


def parse_args(argv: Sequence[str] | None = None, engine: type[Engine] | None = None) -> Engine:
    """The run the command line asks for, ready to :meth:`~pmm_model.run.engine.Engine.run`.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
        engine: the engine class to build (a subclass changes a part of the run); default
            this module's ``Engine``, looked up at the call.

    Bad values end the program with an argparse error (exit status 2) naming the option,
    before any data is read. What ``--resume`` ignores is printed as notes on stderr.
    """
    engine = engine or Engine
    parser = build_parser()
    explicit = vars(parser.parse_args(argv))
    preset = explicit.pop("preset", None)
    resume = explicit.pop("resume", None)
    start = {"overwrite": explicit.pop("overwrite", False), "words": WORDS}
    try:
        if resume is None:
            run = engine(make_config(explicit, preset), **start)
        elif resume == "auto":
            if start.pop("overwrite"):
                parser.error("argument --resume: auto never replaces a run; drop --overwrite")
            run = engine.resume_or_start(explicit, preset, **start)
        else:
            run = engine.resume(resume, explicit, preset, **start)
    except ConfigError as err:
        parser.error(
            WORDS.describe(err) if err.option is None else f"argument {WORDS.describe(err)}"
        )
    except (ValueError, FileNotFoundError) as err:
        parser.error(f"argument --resume: {err}")
    for note in run.ignored:
        print(f"note: {WORDS.describe(note)}", file=sys.stderr)
    try:
        device = resolve_device(run.config.device)
    except ValueError as err:
        parser.error(f"argument --device: {err}")
    config = run.config
    if start.get("overwrite") and resume not in (None, "auto") and _own_folder(resume, config):
        parser.error(
            "argument --overwrite: --resume continues the run of its own folder, there is "
            "no other run to replace; drop --overwrite (or give another --output-dir)"
        )
    given = set(explicit) - {note.key for note in run.ignored}
    unused = unused_option(
        sorted(given),
        model=config.model,
        mix=config.mix,
        mix_after=config.mix_after,
        amp=config.amp,
        device_type=device.type,
    )
    if unused is not None:
        parser.error(f"argument {flag_name(unused[0])}: {unused[1]}")
    return run


def _own_folder(checkpoint: str, config: TrainConfig) -> bool:
    """Whether ``checkpoint`` is the run checkpoint of ``config``'s output folder."""
    own = os.path.join(config.output_dir or "", "checkpoint.pt")
    return os.path.exists(own) and os.path.samefile(checkpoint, own)


def _fail(status: int, message: str) -> NoReturn:
    # Every rank gets the same error; the first process of each node (launcher) reports it.
    if os.environ.get("LOCAL_RANK", "0") == "0":
        print(f"{PROG}: error: {message}", file=sys.stderr)
    sys.exit(status)


@ctrl_c_exits(PROG)
def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Run the CLI; returns the final ``{"rank1", "mAP", "mINP", "wall_seconds"}``.

    Errors end the program: status 2 for arguments, 1 for a failed run,
    128 + signal number for a run stopped (and checkpointed) by SIGTERM or SIGINT.
    """
    run = parse_args(argv)
    try:
        return run.run()
    except TrainingInterrupted as err:
        _fail(128 + err.signum, WORDS.describe(err))
    except OSError as err:
        checkpoint = run.checkpoint_file
        if err.errno in (errno.ENOSPC, errno.EDQUOT) and checkpoint.is_file():
            _fail(1, f"{err.strerror}; free some space, then continue with --resume {checkpoint}")
        _fail(1, WORDS.describe(err))
    except (TrainingError, RunFolderError, WeightsUnavailableError, ValueError) as err:
        _fail(1, WORDS.describe(err))
    except KeyboardInterrupt:
        _fail(128 + 2, "interrupted by a second Ctrl-C before checkpointing")


if __name__ == "__main__":
    main()
