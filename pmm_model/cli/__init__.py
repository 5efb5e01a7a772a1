"""Command-line front ends: ``pmm_model.cli.train`` and ``pmm_model.cli.evaluate``.

They parse arguments, call the library (:mod:`pmm_model.engine`, :mod:`pmm_model.evaluation`)
and turn its exceptions into one-line errors and exit codes; only they exit the process.
``python -m pmm_model.train`` and ``python -m pmm_model.evaluate`` remain as aliases.
"""

from pmm_model.cli.args import int_at_least

__all__ = ["int_at_least"]
