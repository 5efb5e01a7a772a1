"""Atomic file writes: every file a command writes (checkpoints, metrics, features, pictures,
ONNX graphs, study reports) goes through :func:`atomic_path`.

The content is written to a temporary file beside the target, fsynced, and moved into place
with ``os.replace`` (atomic), then the folder is fsynced: after an exception, a signal, a full
disk, a file-size limit or a power cut the target holds either its previous content or the new
one, complete. A full disk or quota (``ENOSPC``, ``EDQUOT``) and a file-size limit (``ulimit
-f``: ``EFBIG``) become one-line ``OSError`` messages naming the file and saying whether the
previous one is kept.

Example:
    >>> atomic_write("out/report.json", lambda f: f.write(b"{}"))  # doctest: +SKIP
    >>> with atomic_path("out/features.npz") as tmp:  # doctest: +SKIP
    ...     np.savez(tmp, features=features)
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = ["atomic_path", "atomic_write", "remove_temp_files"]


def _worded(err: OSError, path: Path, size: int | None) -> OSError | None:
    """The one-line error for a full disk or a file-size limit; None for other errors."""
    kept = f"the previous {path.name} is kept" if path.exists() else f"no {path.name} written"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        needed = f"needed about {max(1, round(size / 2**20))} MB, " if size else ""
        free = shutil.disk_usage(path.parent).free / 2**20
        return OSError(
            err.errno,
            f"no space left on the device of {path.parent} to write {path.name} ({needed}"
            f"{free:.0f} MB free); {kept}",
        )
    if err.errno == errno.EFBIG:
        return OSError(
            err.errno,
            f"cannot write {path}: the file-size limit was reached (ulimit -f); {kept}",
        )
    return None


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike, size: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it replaces ``path``.

    For writers that want a file name (``np.savez``, ``ONNXProgram.save``). The temporary file
    (``.<name>.*.tmp``, same suffix as ``path``) is removed on any exception; a process killed
    mid-write leaves it for :func:`remove_temp_files`. The folder is created.

    Args:
        path: the file to write.
        size: the content's size in bytes, if known (for the full-disk message).

    Raises:
        OSError: as the writing raised it; a full disk, quota or file-size limit with a
            one-line message naming ``path`` and saying whether the previous file is kept.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)  # as open() would create it; mkstemp makes it private
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        worded = _worded(err, path, size)
        if worded is None:
            raise
        raise worded from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def atomic_write(
    path: str | os.PathLike, write: Callable[[IO[bytes]], object], size: int | None = None
) -> None:
    """Call ``write`` on a temporary file beside ``path``, then move it into place (see
    :func:`atomic_path`).

    Args:
        path: the file to write.
        write: writes the content to the file object it is given.
        size: the content's size in bytes, if known (for the full-disk message).

    Raises:
        OSError: as for :func:`atomic_path`.
    """
    with atomic_path(path, size) as tmp, open(tmp, "wb") as f:
        write(f)


def remove_temp_files(folder: str | os.PathLike, name: str) -> list[Path]:
    """Remove the temporary files a killed :func:`atomic_path` of ``folder/name`` left.

    Call it only while no other process writes there (the training run holds a lock).
    Returns the removed paths.
    """
    removed = sorted(Path(folder).glob(f".{name}.*.tmp"))
    for tmp in removed:
        tmp.unlink(missing_ok=True)
    return removed
