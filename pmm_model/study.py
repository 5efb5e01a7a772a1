"""``python -m pmm_model.study``: an alias of the ablation-study CLI, :mod:`pmm_model.cli.study`."""

if __name__ == "__main__":
    from pmm_model.cli.scripts import study

    study()
