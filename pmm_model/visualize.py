"""``python -m pmm_model.visualize``: an alias of :mod:`pmm_model.cli.visualize`."""

if __name__ == "__main__":
    from pmm_model.cli.scripts import visualize

    visualize()
