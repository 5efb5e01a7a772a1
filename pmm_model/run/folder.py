"""A training run's output folder: one run at a time, never lost by accident.

:class:`RunFolder` takes an exclusive lock on ``<folder>/.lock`` for the whole run (a second
run on the same folder fails at once; the lock dies with its process, so a crash leaves
nothing to clean), refuses a folder that holds another run unless the caller resumes that
run's own checkpoint or asks to overwrite it, removes temporary files a killed checkpoint
write left, and sends the ``pmm_model`` loggers to ``train.log`` and stdout.

A folder holds a run when it holds ``checkpoint.pt``; a ``train.log`` or ``metrics.json``
without one (a run killed before its first checkpoint) is a leftover, not a run.

Starting is a transaction. Until the caller calls :meth:`RunFolder.started` (after every
check that can fail: data, model, the checkpoint to resume), the files a fresh start
replaces (an overwritten run, or leftovers) wait in ``<folder>/.previous-run/``. A start
that fails leaves the folder as it found it: those files move back, the new log goes (or an
appended one is cut back), and a folder the start created is removed. A start killed before
:meth:`~RunFolder.started` (SIGKILL, power cut) is rolled back the same way by the next run
on the folder. Only :meth:`~RunFolder.started` deletes the replaced files.

A job of several processes (nodes) writes into one folder that every process must see: rank 0
writes a token file with :meth:`RunFolder.write_token`, every rank checks it with
:func:`shows_token`, and rank 0 removes it with :meth:`RunFolder.remove_token`.

Example:
    >>> with RunFolder("runs/demo", overwrite=True) as folder:  # doctest: +SKIP
    ...     ...  # load the data, build the model
    ...     folder.started()
    ...     folder.checkpoint_path
    PosixPath('runs/demo/checkpoint.pt')
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import secrets
import shutil
import sys
from pathlib import Path
from types import TracebackType

from pmm_model.run.atomic import remove_temp_files
from pmm_model.run.errors import RunFolderError

__all__ = [
    "CHECKPOINT",
    "LOG",
    "METRICS",
    "RUN_FILES",
    "LogFile",
    "RunFolder",
    "RunFolderError",
    "shows_token",
]

# What a run folder holds: the checkpoint, one metrics.json entry per evaluation (``epoch``,
# the evaluation.metrics.METRIC_KEYS as fractions, ``seconds_per_epoch``) and the log.
CHECKPOINT, METRICS, LOG = "checkpoint.pt", "metrics.json", "train.log"
RUN_FILES = (CHECKPOINT, METRICS, LOG)
# Where a fresh start keeps the files it replaces until it has started; renamed to
# DISCARDED before deletion so a kill during the deletion never looks like a rollback.
PREVIOUS, DISCARDED = ".previous-run", ".previous-run.deleting"
# The shared-folder token: ``.shared-<token>`` holding the token. A name never used before, so
# no node's file system cache can answer for it from an earlier run's file.
TOKEN_PREFIX = ".shared-"

logger = logging.getLogger("pmm_model.run.folder")


class LogFile(logging.FileHandler):
    """``train.log``, appended to. A write that fails (a full disk) is reported once on stderr
    and the file is then left alone: the run goes on, logging to stdout, and a checkpoint that
    cannot be written stops it with how to resume. The standard handler prints a traceback
    for every record instead."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, mode="a")
        self.failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        self.failed = True
        error = sys.exc_info()[1]
        reason = os.strerror(error.errno) if isinstance(error, OSError) and error.errno else error
        print(
            f"warning: cannot write {self.baseFilename} ({reason}); logging to stdout only",
            file=sys.stderr,
        )


class RunFolder:
    """The output folder of one training run, used as a context manager.

    Args:
        path: the folder (created with its parents).
        resume_from: the checkpoint the run continues, or None for a fresh start. Only
            ``path/checkpoint.pt`` itself continues the run in ``path``; any other checkpoint
            starts a new run there, which needs a folder that holds no run (or ``overwrite``).
        overwrite: start over in a folder that holds another run (its checkpoint, metrics
            and log are replaced once the new run has started).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        resume_from: str | os.PathLike | None = None,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        self.resume_from = None if resume_from is None else Path(resume_from)
        self.overwrite = overwrite
        self._lock: int | None = None
        self._handlers: list[logging.Handler] = []
        self._created: list[Path] = []  # folders this start made, outermost first
        self._log_size: int | None = None  # the log's size before this start (None: no log)
        self._made_lock = False
        self._claimed = False  # the folder was claimed: a failed start rolls back from here
        self._started = False

    @property
    def checkpoint_path(self) -> Path:
        """Where the run's checkpoint lives."""
        return self.path / CHECKPOINT

    @property
    def metrics_path(self) -> Path:
        """Where the run's evaluations are written (JSON list)."""
        return self.path / METRICS

    @property
    def resuming(self) -> bool:
        """True when the run continues the checkpoint of this folder's run."""
        if self.resume_from is None or not self.checkpoint_path.is_file():
            return False
        try:
            return os.path.samefile(self.resume_from, self.checkpoint_path)
        except OSError:
            return False

    def __enter__(self) -> RunFolder:
        try:
            missing = [p for p in (self.path, *self.path.parents) if not p.exists()]
            self.path.mkdir(parents=True, exist_ok=True)
            self._created = missing[::-1]
            self._made_lock = not (self.path / ".lock").exists()
            self._lock = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            self._remove_created()
            raise RunFolderError("unusable", self.path, reason=str(err.strerror or err)) from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(self._lock)
            self._lock = None
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunFolderError("in_use", self.path) from None
            raise
        try:
            self._claim()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _claim(self) -> None:
        restored = self._roll_back_replacement()
        shutil.rmtree(self.path / DISCARDED, ignore_errors=True)
        holds_run = self.checkpoint_path.is_file()
        if holds_run and not self.resuming and not self.overwrite:
            if self.resume_from is not None:
                raise RunFolderError("not_its_checkpoint", self.path, resume_from=self.resume_from)
            raise RunFolderError("holds_run", self.path, checkpoint=self.checkpoint_path)
        replaced = []
        if not self.resuming:
            # An overwritten run goes whole (pictures, gallery.npz, model.onnx made from it
            # would pass for the new run's); a start over leftovers replaces only run files.
            kept = (".lock", PREVIOUS, DISCARDED)
            replaced = (
                sorted(p.name for p in self.path.iterdir() if p.name not in kept)
                if holds_run
                else [name for name in RUN_FILES if (self.path / name).exists()]
            )
            if replaced:
                (self.path / PREVIOUS).mkdir()
                for name in replaced:
                    os.replace(self.path / name, self.path / PREVIOUS / name)
        log = self.path / LOG
        self._log_size = log.stat().st_size if log.exists() else None
        self._claimed = True
        assert self._lock is not None  # taken by __enter__
        os.ftruncate(self._lock, 0)
        os.write(self._lock, f"{os.getpid()}\n".encode())
        stale = [p for name in (CHECKPOINT, METRICS) for p in remove_temp_files(self.path, name)]
        for token_file in self.path.glob(f"{TOKEN_PREFIX}*"):  # a check killed halfway
            token_file.unlink()
        self._setup_logging()
        if restored:
            logger.info(
                "restored %s: a start killed before it began was replacing them",
                ", ".join(restored),
            )
        if stale:
            logger.info(
                "removed %d temporary files of interrupted writes: %s",
                len(stale),
                ", ".join(p.name for p in stale),
            )

    def started(self) -> None:
        """Mark the run as started (every check passed): the replaced files are deleted."""
        self._started = True
        previous = self.path / PREVIOUS
        if previous.exists():
            names = sorted(p.name for p in previous.iterdir())
            os.replace(previous, self.path / DISCARDED)
            shutil.rmtree(self.path / DISCARDED)
            logger.info("replaced the previous %s of %s", ", ".join(names), self.path)

    def write_token(self) -> str:
        """Write a new random token into the folder (``.shared-<token>``); returns it.

        Raises:
            RunFolderError: the file cannot be written (``kind="unusable"``).
        """
        token = secrets.token_hex(8)
        try:
            (self.path / f"{TOKEN_PREFIX}{token}").write_text(token)
        except OSError as err:
            raise RunFolderError("unusable", self.path, reason=str(err.strerror or err)) from None
        return token

    def remove_token(self, token: str) -> None:
        """Remove the file :meth:`write_token` wrote for ``token`` (if it is there)."""
        (self.path / f"{TOKEN_PREFIX}{token}").unlink(missing_ok=True)

    def _roll_back_replacement(self) -> list[str]:
        """Move the files of ``.previous-run/`` back; returns their names."""
        previous = self.path / PREVIOUS
        if not previous.is_dir():
            return []
        names = sorted(p.name for p in previous.iterdir())
        for name in names:
            os.replace(previous / name, self.path / name)
        previous.rmdir()
        return names

    def _roll_back(self) -> None:
        """Undo a start that failed before :meth:`started`: the folder as it was found."""
        if self._claimed:
            log = self.path / LOG
            if self._log_size is None:
                log.unlink(missing_ok=True)
            elif log.exists():
                os.truncate(log, self._log_size)
            self._roll_back_replacement()
        if self._made_lock:
            (self.path / ".lock").unlink(missing_ok=True)
        self._remove_created()

    def _remove_created(self) -> None:
        for folder in reversed(self._created):
            try:
                folder.rmdir()
            except OSError:  # not empty: something else was put there meanwhile
                break
        self._created = []

    def _setup_logging(self) -> None:
        self._handlers = [
            LogFile(self.path / LOG),
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
        # An interrupted run logs its own stop (with how to resume); other errors of a started
        # run are logged here, so the log tells why the run ended.
        if self._started and isinstance(exc, Exception) and getattr(exc, "signum", None) is None:
            logger.error("the run stopped: %s", exc)
        for handler in self._handlers:
            logging.getLogger("pmm_model").removeHandler(handler)
            handler.close()
        self._handlers = []
        if self._lock is not None:
            if not self._started:
                self._roll_back()
            os.close(self._lock)  # releases the flock
            self._lock = None


def shows_token(path: str | os.PathLike, token: str) -> bool:
    """True when folder ``path``, as this process sees it, holds the file that
    :meth:`RunFolder.write_token` wrote for ``token``: the folder is the writer's."""
    try:
        # Bytes, not text: nothing but OSError may stop a rank before the check's collective.
        return (Path(path) / f"{TOKEN_PREFIX}{token}").read_bytes() == token.encode()
    except OSError:
        return False
