"""``python -m pmm_model.evaluate``: alias of the evaluation CLI :mod:`pmm_model.cli.evaluate`."""

from pmm_model.cli.evaluate import main

if __name__ == "__main__":
    main()
