"""``python -m pmm_model.train``: an alias of the training CLI, :mod:`pmm_model.cli.train`."""

from pmm_model.cli.train import main

if __name__ == "__main__":
    main()
