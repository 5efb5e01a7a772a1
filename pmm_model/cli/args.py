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
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "ctrl_c_exits",
    "existing_file",
    "finite_float",
    "int_at_least",
    "output_file",
    "output_folder",
    "pretrained_weights",
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
