"""The console scripts of ``[project.scripts]`` (``pmm-train``, ``pmm-extract``, ...).

Each CLI's ``main`` returns what it produced, for tests and callers; a console script's return
value becomes the process's exit status, so these entry points run ``main`` and return None
(exit 0). Errors exit inside ``main`` with their own status. The ``python -m pmm_model.<name>``
aliases run these too.

This module and the packages above it import neither torch nor the CLI: the CLI module (and
torch with it, seconds) is imported under the same Ctrl-C guard as its ``main``, so a Ctrl-C
at any point of start-up ends with one line and status 130.
"""

from __future__ import annotations

import importlib
import os
import sys

from pmm_model.cli.args import ctrl_c_exits

__all__ = ["evaluate", "export", "extract", "program_name", "study", "train", "visualize"]


# The CLIs with a ``python -m pmm_model.<name>`` alias module; the others run as
# ``python -m pmm_model.cli.<name>``.
_ALIASED = ("train", "evaluate", "visualize", "study")


def program_name(name: str) -> str:
    """What the user typed to run CLI ``name``, for its messages: ``pmm-<name>`` when run as
    the console script, ``python -m pmm_model.cli.<name>`` when run as that module, else
    ``python -m pmm_model.<name>`` (the alias; ``extract`` and ``export`` have none).

    Example:
        >>> program_name("evaluate")  # under pytest  # doctest: +SKIP
        'python -m pmm_model.evaluate'
    """
    typed = sys.argv[0] if sys.argv else ""
    if os.path.basename(typed) == f"pmm-{name}":
        return f"pmm-{name}"
    as_cli = typed.endswith(os.path.join("cli", f"{name}.py"))
    return f"python -m pmm_model.{'' if name in _ALIASED and not as_cli else 'cli.'}{name}"


def _run(name: str) -> None:
    @ctrl_c_exits(program_name(name))
    def start() -> None:
        importlib.import_module(f"pmm_model.cli.{name}").main()

    start()


def train() -> None:
    """``pmm-train``: :mod:`pmm_model.cli.train`."""
    _run("train")


def evaluate() -> None:
    """``pmm-evaluate``: :mod:`pmm_model.cli.evaluate`."""
    _run("evaluate")


def visualize() -> None:
    """``pmm-visualize``: :mod:`pmm_model.cli.visualize`."""
    _run("visualize")


def study() -> None:
    """``pmm-study``: :mod:`pmm_model.cli.study`."""
    _run("study")


def extract() -> None:
    """``pmm-extract``: :mod:`pmm_model.cli.extract`."""
    _run("extract")


def export() -> None:
    """``pmm-export``: :mod:`pmm_model.cli.export`."""
    _run("export")
