"""The real torchreid, fast-reid and timm (the ``clients`` extra and fastreid 1.4.0, see the
Makefile). fast-reid 1.4.0 imports names that Python 3.10 moved to ``collections.abc`` and one
that torch 2 removed; the aliases are set here, for the tests, never in site-packages."""

import collections
import collections.abc
import sys
import types

for _name in ("Mapping", "Sequence", "MutableMapping", "Iterable"):
    if not hasattr(collections, _name):
        setattr(collections, _name, getattr(collections.abc, _name))

# fastreid.engine imports fastreid.data, which reads ``string_classes`` from ``torch._six``, a
# module torch 2 removed: the same alias, for the tests only.
if "torch._six" not in sys.modules:
    _six = types.ModuleType("torch._six")
    _six.string_classes = (str, bytes)  # type: ignore[attr-defined]
    sys.modules["torch._six"] = _six
