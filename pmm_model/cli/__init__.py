"""Command-line front ends: ``train``, ``evaluate``, ``visualize``, ``study``, ``extract`` and
``export``.

They parse arguments, call the library (:mod:`pmm_model.run.engine`,
:mod:`pmm_model.evaluation.evaluator`, :mod:`pmm_model.apps.visualize`,
:mod:`pmm_model.apps.study`, :mod:`pmm_model.apps.extract`, :mod:`pmm_model.apps.export`) and
turn its exceptions into one-line errors and exit codes; only they exit the process. Each runs
as a console script (``pmm-<name>``, :mod:`pmm_model.cli.scripts`) or ``python -m
pmm_model.cli.<name>``; the first four also as ``python -m pmm_model.<name>`` (the alias modules
``pmm_model/<name>.py``).
"""

from pmm_model.cli.args import int_at_least

__all__ = ["int_at_least"]
