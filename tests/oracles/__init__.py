"""What the tests share: the loop oracles, the inputs they feed the op and the tiny training set
(the extraction and export tests' checkpoints and image trees are in ``oracles.deploy``).

Tests import from here (``from oracles import make_feat``: pytest puts ``tests/`` on the path),
never from each other; fixtures live in ``tests/conftest.py``.
"""

from .checks import assert_matches_oracle, check_against_oracle
from .data import TINY_SET, tiny_run_options, tiny_synthetic_set
from .inputs import LAYOUTS, SEEDS, copy_keeping_layout, make_feat, mix_problems

__all__ = [
    "LAYOUTS",
    "SEEDS",
    "TINY_SET",
    "assert_matches_oracle",
    "check_against_oracle",
    "copy_keeping_layout",
    "make_feat",
    "mix_problems",
    "tiny_run_options",
    "tiny_synthetic_set",
]
