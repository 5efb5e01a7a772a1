"""``python -m pmm_model.evaluate``: an alias of :mod:`pmm_model.cli.evaluate`."""

if __name__ == "__main__":
    from pmm_model.cli.scripts import evaluate

    evaluate()
