"""One training run: its configuration, checkpoints, run folder, process, errors and engine."""
