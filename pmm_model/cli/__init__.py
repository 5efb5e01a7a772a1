"""Command-line front ends: ``train``, ``evaluate``, ``visualize`` and ``study``.

They parse arguments, call the library (:mod:`pmm_model.engine`, :mod:`pmm_model.evaluation`,
:mod:`pmm_model.pictures`, :mod:`pmm_model.ablation`) and turn its exceptions into one-line
errors and exit codes; only they exit the process. Each runs as ``python -m pmm_model.<name>``
(through the alias module ``pmm_model/<name>.py``) or ``python -m pmm_model.cli.<name>``.
"""

from pmm_model.cli.args import int_at_least

__all__ = ["int_at_least"]
