"""The console scripts of ``[project.scripts]`` (``pmm-train``, ``pmm-extract``, ...).

Each CLI's ``main`` returns what it produced, for tests and callers; a console script's return
value becomes the process's exit status, so these entry points run ``main`` and return None
(exit 0). Errors exit inside ``main`` with their own status.
"""

from __future__ import annotations

import importlib

__all__ = ["evaluate", "export", "extract", "study", "train", "visualize"]


def _run(name: str) -> None:
    importlib.import_module(f"pmm_model.cli.{name}").main()


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
