"""What the CLIs share: argparse ``type=`` callables and the Ctrl-C exit.

Each type raises ``argparse.ArgumentTypeError`` with a message naming what it got, which
argparse prints as ``argument --name: <message>``.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, TypeVar

from pmm_model.run.limits import LIMITS

__all__ = [
    "amp_unused",
    "bounded",
    "ctrl_c_exits",
    "existing_file",
    "finite_float",
    "int_at_least",
    "int_in_range",
    "output_file",
    "output_folder",
    "pretrained_weights",
    "unused_option",
    "writable_output",
]

_Main = TypeVar("_Main", bound=Callable[..., Any])


def ctrl_c_exits(prog: str) -> Callable[[_Main], _Main]:
    """Decorate a CLI's ``main``: Ctrl-C anywhere in it (start-up, loading, drawing) ends the
    program with one line on stderr and status 130 (128 + SIGINT) instead of a traceback.

    Example:
        >>> @ctrl_c_exits("python -m pmm_model.x")
        ... def main(argv=None):
        ...     raise KeyboardInterrupt
        >>> main()  # doctest: +SKIP
        python -m pmm_model.x: interrupted (Ctrl-C)
    """

    def decorate(main: _Main) -> _Main:
        @functools.wraps(main)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            try:
                return main(*args, **kwargs)
            except KeyboardInterrupt:
                print(f"{prog}: interrupted (Ctrl-C)", file=sys.stderr)
                sys.exit(128 + signal.SIGINT)

        return wrapped  # type: ignore[return-value]

    return decorate


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type`` accepting integers >= ``low``, with a message naming the bound."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def int_in_range(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type`` accepting integers in ``[low, high]``; the message names the range.

    Example:
        >>> int_in_range(1, 8)("9")
        Traceback (most recent call last):
        argparse.ArgumentTypeError: must be <= 8, got 9 (range [1, 8])
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            bound = f">= {low}" if value < low else f"<= {high}"
            raise argparse.ArgumentTypeError(
                f"must be {bound}, got {value} (range [{low}, {high}])"
            )
        return value

    return parse


def bounded(key: str) -> Callable[[str], int]:
    """The argparse ``type`` of option ``key`` of :data:`pmm_model.run.limits.LIMITS`: an
    integer within its hard bounds, refused at parse time with the range named.

    Example:
        >>> bounded("height")("100000")
        Traceback (most recent call last):
        argparse.ArgumentTypeError: must be <= 4096, got 100000 (range [16, 4096])
    """
    return int_in_range(*LIMITS[key])


def finite_float(low: float, inclusive: bool = False) -> Callable[[str], float]:
    """An argparse ``type`` accepting finite numbers > ``low`` (>= with ``inclusive``).

    Example:
        >>> finite_float(0.0)("1e-3")
        0.001
    """

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if value < low or (value == low and not inclusive):
            raise argparse.ArgumentTypeError(
                f"must be {'>=' if inclusive else '>'} {low:g}, got {text}"
            )
        return value

    return parse


# Training options only the PMM network reads; those the baseline reads only with --mix-after
# (its inserted layer); those only mixing reads.
PMM_ONLY = ("feature_dim", "block_size", "cam")
LAYER_OPTIONS = ("mix", "num_blocks")
MIXING_ONLY = ("block_size", "num_blocks", "cam")


def unused_option(
    given: Collection[str],
    *,
    model: str,
    mix: str,
    mix_after: str | None,
    amp: str | None,
    device_type: str,
) -> tuple[str, str] | None:
    """The first training option in ``given`` that the run would not use, and why; None if
    it uses them all. The CLIs refuse it instead of ignoring it.

    Args:
        given: the configuration keys given explicitly on the command line.
        model, mix, mix_after, amp: the run's network, feature-mix mode, the baseline's
            mixing place and the autocast dtype.
        device_type: ``"cpu"`` or ``"cuda"``, where the run trains.

    Example:
        >>> unused_option(
        ...     ["lr", "mix"], model="baseline", mix="cutmix", mix_after=None, amp="off",
        ...     device_type="cpu",
        ... )
        ('mix', 'the baseline mixes only with --mix-after (where its layer mixes)')
    """
    import pmm_kernels  # here: the console scripts import this module before torch

    cells = pmm_kernels.MODES[mix].cells if mix in pmm_kernels.MODES else None
    for key in given:
        if model != "pmm" and key in PMM_ONLY:
            return key, f"only for --model pmm; the {model} network does not use it"
        if model != "pmm" and mix_after is None and key in LAYER_OPTIONS:
            return key, f"the {model} mixes only with --mix-after (where its layer mixes)"
        if mix == "none" and key in MIXING_ONLY:
            return key, "unused with --mix none, which trains without mixing"
        if cells == "rectangle" and key in ("block_size", "num_blocks"):
            return key, f"unused with --mix {mix}, which drops one rectangle of the map"
        if key == "cam" and cells != "salient":
            return key, (
                f"unused with --mix {mix}, which does not rank blocks by saliency "
                "(only the a_* modes do)"
            )
        why = amp_unused(amp, device_type) if key == "amp" else None
        if why is not None:
            return key, why
    return None


def amp_unused(amp: str | None, device_type: str) -> str | None:
    """Why autocast ``amp`` (``"bf16"``, ``"fp16"``, ``"off"``) would be ignored on
    ``device_type``; None if it would not.

    Example:
        >>> amp_unused("bf16", "cpu").split(";")[0]
        'autocast runs on CUDA only, and this run trains on cpu in float32'
    """
    if amp in (None, "off") or device_type == "cuda":
        return None
    return (
        f"autocast runs on CUDA only, and this run trains on {device_type} in float32; "
        "drop it or give --amp off"
    )


def existing_file(text: str) -> str:
    """An argparse ``type`` accepting the path of an existing file."""
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    return text


def pretrained_weights(text: str) -> str:
    """``"imagenet"`` or the path of an existing state-dict file."""
    if text != "imagenet" and not Path(text).is_file():
        raise argparse.ArgumentTypeError(
            f"expected 'imagenet' or the path of a state dict of the backbone, got {text!r} "
            "(no such file)"
        )
    return text


def backbone_name(text: str) -> str:
    """A torchvision ResNet of :data:`~pmm_model.nets.backbones.BACKBONES` or ``timm/<name>``
    (whether timm has that model is checked with the configuration)."""
    # Imported here: this module loads before torch, under the console scripts' Ctrl-C guard.
    from pmm_model.nets.backbones import BACKBONES, is_timm_backbone

    if text not in BACKBONES and not is_timm_backbone(text):
        raise argparse.ArgumentTypeError(
            f"expected one of {', '.join(sorted(BACKBONES))} or timm/<a timm model name>, "
            f"got {text!r}"
        )
    return text


def writable_output(path: str | os.PathLike, folder: bool = False) -> Path:
    """Check, before any work, that ``path`` (a file, or with ``folder`` a folder) can be
    written; returns it.

    A missing ``path`` and missing parents are fine when the nearest existing parent is a
    writable folder. Writability is tested by creating (and removing) a temporary file there,
    which also catches read-only mounts and holds for root; nothing else is created.

    Raises:
        ValueError: one line saying why not (a folder where a file is wanted or the reverse,
            a file in the parent path, no permission, a read-only file system).

    Example:
        >>> writable_output("/proc/no/such.json")  # doctest: +SKIP
        Traceback (most recent call last):
        ValueError: cannot write '/proc/no/such.json': /proc is not writable (...)
    """
    path = Path(path)
    if path.is_dir() and not folder:
        raise ValueError(f"cannot write {str(path)!r}: it is a folder; give a file name")
    if path.exists() and not path.is_dir() and folder:
        raise ValueError(f"cannot use {str(path)!r} as a folder: it is a file")
    existing = path if folder and path.is_dir() else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"cannot write {str(path)!r}: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(
            f"cannot write {str(path)!r}: {existing} is not writable ({err.strerror or err})"
        ) from None
    if path.is_file() and not os.access(path, os.W_OK):
        raise ValueError(f"cannot write {str(path)!r}: the file is read-only")
    return path


def output_file(text: str) -> str:
    """An argparse ``type`` for a file the command writes (see :func:`writable_output`)."""
    try:
        writable_output(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def output_folder(text: str) -> str:
    """An argparse ``type`` for a folder the command writes into (see
    :func:`writable_output`)."""
    try:
        writable_output(text, folder=True)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text
