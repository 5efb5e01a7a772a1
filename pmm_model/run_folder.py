"""A training run's output folder: one run at a time, never overwritten by accident.

:class:`RunFolder` takes an exclusive lock on ``<folder>/.lock`` for the whole run (a second
run on the same folder fails at once; the lock dies with its process, so a crash leaves
nothing to clean), refuses a folder that holds another run unless the caller resumes it or
asks to overwrite it, removes temporary files a killed checkpoint write left, and sends the
``pmm_model`` loggers to ``train.log`` and stdout.

Example:
    >>> with RunFolder("runs/demo", resuming=False, overwrite=True) as folder:  # doctest: +SKIP
    ...     folder.checkpoint_path
    PosixPath('runs/demo/checkpoint.pt')
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import sys
from pathlib import Path
from types import TracebackType

from pmm_model.checkpoint import remove_temp_files

__all__ = ["RUN_FILES", "RunFolder", "RunFolderError"]

CHECKPOINT, METRICS, LOG = "checkpoint.pt", "metrics.json", "train.log"
RUN_FILES = (CHECKPOINT, METRICS, LOG)

logger = logging.getLogger("pmm_model.run_folder")


class RunFolderError(RuntimeError):
    """The output folder cannot be used: locked by another run, holding one, or unwritable."""


class RunFolder:
    """The output folder of one training run, used as a context manager.

    Args:
        path: the folder (created with its parents).
        resuming: the run continues ``path/checkpoint.pt``, so its files may be there.
        overwrite: start over in a folder that holds another run (its checkpoint, metrics
            and log are replaced).
    """

    def __init__(self, path: str | os.PathLike, resuming: bool, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.resuming, self.overwrite = resuming, overwrite
        self._lock: int | None = None
        self._handlers: list[logging.Handler] = []

    @property
    def checkpoint_path(self) -> Path:
        """Where the run's checkpoint lives."""
        return self.path / CHECKPOINT

    @property
    def metrics_path(self) -> Path:
        """Where the run's evaluations are written (JSON list)."""
        return self.path / METRICS

    def __enter__(self) -> RunFolder:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise RunFolderError(
                f"cannot use output folder {str(self.path)!r}: {err.strerror or err}"
            ) from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(self._lock)
            self._lock = None
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunFolderError(
                    f"output folder {str(self.path)!r} is in use by another run; wait for it "
                    "to finish or choose another --output-dir"
                ) from None
            raise
        try:
            self._claim()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _claim(self) -> None:
        existing = [name for name in RUN_FILES if (self.path / name).exists()]
        if existing and not self.resuming:
            if not self.overwrite:
                raise RunFolderError(
                    f"output folder {str(self.path)!r} holds another run ({', '.join(existing)});"
                    f" continue it with --resume {self.checkpoint_path}, or start over and "
                    "replace it with --overwrite (or choose another --output-dir)"
                )
            for name in existing:
                (self.path / name).unlink()
        os.ftruncate(self._lock, 0)
        os.write(self._lock, f"{os.getpid()}\n".encode())
        stale = [p for name in (CHECKPOINT, METRICS) for p in remove_temp_files(self.path, name)]
        self._setup_logging()
        if stale:
            logger.info(
                "removed %d temporary files of interrupted writes: %s",
                len(stale),
                ", ".join(p.name for p in stale),
            )

    def _setup_logging(self) -> None:
        self._handlers = [
            logging.FileHandler(self.path / LOG, mode="a"),
            logging.StreamHandler(sys.stdout),
        ]
        # On the package logger, so the data loaders' warnings (skipped images) reach the log.
        package_logger = logging.getLogger("pmm_model")
        for handler in self._handlers:
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
            package_logger.addHandler(handler)
        package_logger.setLevel(logging.INFO)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for handler in self._handlers:
            logging.getLogger("pmm_model").removeHandler(handler)
            handler.close()
        self._handlers = []
        if self._lock is not None:
            os.close(self._lock)  # releases the flock
            self._lock = None
