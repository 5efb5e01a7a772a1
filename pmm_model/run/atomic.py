"""Files that are either the old or the new version, never half of one: :func:`atomic_write`.

Example:
    >>> atomic_write("runs/x/metrics.json", lambda f: f.write(b"[]"))  # doctest: +SKIP
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["atomic_write", "remove_temp_files"]


def atomic_write(
    path: str | os.PathLike, write: Callable[[IO[bytes]], object], size: int | None = None
) -> None:
    """Call ``write`` on a temporary file beside ``path``, then move it into place.

    The data is fsynced before ``os.replace`` (atomic) and the folder after it, so after an
    exception, a signal or a power cut ``path`` holds either the previous or the new file,
    complete. An exception removes the temporary file; a process killed mid-write leaves it
    (``.<name>.*.tmp``) for :func:`remove_temp_files`.

    Args:
        path: the file to write.
        write: writes the content to the file object it is given.
        size: the content's size in bytes, if known (for the full-disk message).

    Raises:
        OSError: as the writing raised it; a full disk or quota (``ENOSPC``, ``EDQUOT``) with
            a one-line message: where, how much was needed, and that ``path`` is unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        needed = f"needed about {max(1, round(size / 2**20))} MB, " if size else ""
        free = shutil.disk_usage(path.parent).free / 2**20
        kept = f"the previous {path.name} is kept" if path.exists() else f"no {path.name} written"
        raise OSError(
            err.errno,
            f"no space left on the device of {path.parent} to write {path.name} ({needed}"
            f"{free:.0f} MB free); {kept}",
        ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def remove_temp_files(folder: str | os.PathLike, name: str) -> list[Path]:
    """Remove the temporary files a killed :func:`atomic_write` of ``folder/name`` left.

    Call it only while no other process writes there (the training run holds a lock).
    Returns the removed paths.
    """
    removed = sorted(Path(folder).glob(f".{name}.*.tmp"))
    for tmp in removed:
        tmp.unlink(missing_ok=True)
    return removed
