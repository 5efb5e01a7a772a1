"""``python -m pmm_model.study``: an alias of the ablation-study CLI, :mod:`pmm_model.cli.study`.

The grid logic is :mod:`pmm_model.ablation`.
"""

from pmm_model.cli.study import main

if __name__ == "__main__":
    main()
