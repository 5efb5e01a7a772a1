"""The real torchreid, fast-reid and timm (the ``clients`` extra and fastreid 1.4.0, see the
Makefile). fast-reid 1.4.0 imports names that Python 3.10 moved to ``collections.abc``; the alias
is set here, for the tests, never in site-packages."""

import collections
import collections.abc

for _name in ("Mapping", "Sequence", "MutableMapping", "Iterable"):
    if not hasattr(collections, _name):
        setattr(collections, _name, getattr(collections.abc, _name))
