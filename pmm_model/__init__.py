"""The thin PMM network around :mod:`pmm_kernels`: models, losses, data, training and evaluation.

It needs the ``train`` extra (``pip install 'pmm[train]'``); a plain ``pip install pmm`` gives
:mod:`pmm_kernels` alone, and importing this package then fails at once with a
:class:`MissingExtraError` saying so.

Example:
    >>> import pmm_model
    >>> model = pmm_model.build_model("baseline", num_classes=10, backbone="resnet18")
"""

import importlib.util
import os
import sys
from typing import TYPE_CHECKING, Any


class MissingExtraError(ImportError):
    """A package of an optional extra (``pmm[train]``, ``pmm[deploy]``) is not installed."""


def _missing(modules: tuple[str, ...]) -> list[str]:
    missing = []
    for module in modules:
        try:
            if importlib.util.find_spec(module) is None:
                missing.append(module)
        except (ImportError, ValueError):  # a blocked or half-installed package
            missing.append(module)
    return missing


# The `train` extra's import names (pillow is PIL), checked here so that a plain install fails
# with what to do rather than on torchvision deep inside the model code.
_TRAIN_MODULES = ("torchvision", "PIL", "tqdm", "matplotlib")
# The console scripts ([project.scripts]); their entry points live in this package, so a
# missing extra surfaces while the script's wrapper imports it.
_SCRIPTS = frozenset(
    f"pmm-{name}" for name in ("train", "evaluate", "visualize", "study", "extract", "export")
)
if _missing_train := _missing(_TRAIN_MODULES):
    _error = MissingExtraError(
        f"pmm_model needs the 'train' extra ({', '.join(_missing_train)} missing): "
        "pip install 'pmm[train]'",
        name=_missing_train[0],
    )
    _prog = os.path.basename(sys.argv[0]) if sys.argv else ""
    if _prog in _SCRIPTS:  # `pmm-train --help` on a plain install: one line, as a bad argument
        print(f"{_prog}: error: {_error}", file=sys.stderr)
        raise SystemExit(2)
    raise _error

if TYPE_CHECKING:
    from pmm_model.nets.models import build_model

__all__ = ["MissingExtraError", "build_model"]


def __getattr__(name: str) -> Any:
    # build_model is imported on first use, so that `import pmm_model`, which every command
    # does first, does not load torch: the commands load it inside their Ctrl-C guard
    # (pmm_model.cli.scripts), and a Ctrl-C while it loads ends with one line.
    if name == "build_model":
        from pmm_model.nets.models import build_model

        return build_model
    raise AttributeError(f"module 'pmm_model' has no attribute {name!r}")
