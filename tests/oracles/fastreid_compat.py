"""What fast-reid 1.4.0 needs on Python 3.11 and torch 2: names Python 3.10 moved to
``collections.abc``, and ``torch._six.string_classes`` (torch 2 removed ``torch._six``;
``fastreid.engine`` imports ``fastreid.data``, which reads it). Set for the tests by
:func:`install` before fastreid is imported, never in site-packages."""

from __future__ import annotations

import collections
import collections.abc
import sys
import types


def install() -> None:
    """Set the aliases (idempotent)."""
    for name in ("Mapping", "Sequence", "MutableMapping", "Iterable"):
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))
    if "torch._six" not in sys.modules:
        six = types.ModuleType("torch._six")
        six.string_classes = (str, bytes)  # type: ignore[attr-defined]
        sys.modules["torch._six"] = six
