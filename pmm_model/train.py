"""``python -m pmm_model.train``: an alias of the training CLI, :mod:`pmm_model.cli.train`."""

if __name__ == "__main__":
    from pmm_model.cli.scripts import train

    train()
