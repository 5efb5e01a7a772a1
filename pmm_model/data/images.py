"""Reading image files: decoding to RGB, checking a path before a run reads it, and the
:class:`ImageDataset` every loader and the extractor read through.

An image that cannot be read is named in an :class:`UnreadableImageError` (an ``OSError``) with
what to do; a path that is not a regular file (a FIFO, a folder named ``x.jpg``) is skipped and
named, never waited on.

Example:
    >>> ds = ImageDataset(data.query)  # doctest: +SKIP
    >>> image_problem("photo.jpg")  # None when the file can be read  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from pmm_model.data.datasets import Record

__all__ = ["NOT_A_FILE", "ImageDataset", "UnreadableImageError", "image_problem", "read_image"]

logger = logging.getLogger(__name__)


class UnreadableImageError(OSError):
    """An image file that cannot be decoded; the message names it and what to do."""

    def __init__(self, message: str) -> None:
        # A DataLoader worker's error reaches the main process re-created from one string that
        # holds the worker's traceback; its last line is this error's own message.
        if message.startswith("Caught ") and "\n" in message:
            message = message.rstrip().rsplit("\n", 1)[-1].split(": ", 1)[-1]
        super().__init__(message)


SKIP_HINT = "pass --skip-bad-images (skip_bad=True) to leave unreadable images out"
NOT_A_FILE = "not a regular file"


def read_image(path: str) -> Image.Image:
    """Decode an image file to 8-bit RGB.

    Unlike a bare ``Image.convert("RGB")``, which clips them, 16- and 32-bit grayscale images
    (``I;16``, ``I``) are scaled to 8 bits (the top 8 of 16 bits).

    Raises:
        UnreadableImageError: the file cannot be decoded (named, with PIL's reason), or it is
            larger than PIL's ``Image.MAX_IMAGE_PIXELS`` allows (a decompression bomb).
    """
    try:
        with Image.open(path) as im:
            if im.mode.startswith("I"):
                # uint16 for I;16*, int32 for I; both hold 16-bit samples in practice.
                values = np.asarray(im).astype(np.int64) >> 8
                return Image.fromarray(values.clip(0, 255).astype(np.uint8), "L").convert("RGB")
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UnreadableImageError(f"cannot read image {path} ({_reason(err)})") from err


def image_problem(path: str, decode: bool = False) -> str | None:
    """Why ``path`` cannot be used as an image, or None when it can.

    Without ``decode`` this is a header check (about 0.1 ms a file): the path is a regular
    file (a FIFO would block the reader forever), PIL recognises its format and its size is
    within ``Image.MAX_IMAGE_PIXELS``. A file cut short after its header passes it; ``decode``
    decodes the pixels too (about five times the cost).
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return NOT_A_FILE
        if decode:
            read_image(path)
        else:
            with Image.open(path):
                pass
    except UnreadableImageError as err:
        return _reason(err.__cause__) if err.__cause__ is not None else str(err)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return _reason(err)
    return None


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, Image.DecompressionBombError):
        return f"too large to decode safely: {text}"
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


class ImageDataset(Dataset):
    """A torch ``Dataset`` over records: item ``i`` is ``(transform(image), pid, camid)``.

    Images are decoded to 8-bit RGB by :func:`read_image`; without a transform the PIL image
    is returned. Every file is checked when the dataset is built, so a bad file stops a run
    before it trains rather than steps or epochs later:

    * a path that is not a regular file (a folder, a FIFO, a device) is always left
      out, named in a warning;
    * a file that cannot be read raises :class:`UnreadableImageError` naming the files,
      unless ``skip_bad``. The check reads headers only (:func:`image_problem`); a file
      corrupt past its header fails when it is loaded, with the same error.

    Args:
        records: Sequence of ``(img_path, pid, camid)``.
        transform: Callable applied to the PIL image.
        skip_bad: Decode every image once at construction and drop those PIL cannot read
            (count in ``num_skipped``, names logged). This is a full decode rather than a
            header check, which would let truncated JPEGs through; it costs roughly one pass
            over the images.

    Raises:
        UnreadableImageError: a file that cannot be read, without ``skip_bad``.
        ValueError: no images (left).

    Example:
        >>> ds = ImageDataset(data.train, transform=T.ToTensor())  # doctest: +SKIP
        >>> img, pid, camid = ds[0]  # doctest: +SKIP
    """

    def __init__(
        self,
        records: Sequence[tuple[str, int, int]],
        transform: Callable[[Image.Image], Any] | None = None,
        skip_bad: bool = False,
    ) -> None:
        self.records = [Record(str(p), int(pid), int(cam)) for p, pid, cam in records]
        for record in self.records:
            if not all(-(2**63) <= v < 2**63 for v in (record.pid, record.camid)):
                raise ValueError(
                    f"image {record.img_path}: pid {record.pid} / camid {record.camid} does "
                    "not fit a 64-bit integer"
                )
        self.transform = transform
        problems = {
            path: problem
            for path in sorted({r.img_path for r in self.records})
            if (problem := image_problem(path, decode=skip_bad)) is not None
        }
        unreadable = {p: why for p, why in problems.items() if why != NOT_A_FILE}
        if unreadable and not skip_bad:
            listed = [f"{p} ({why})" for p, why in list(unreadable.items())[:3]]
            more = len(unreadable) - len(listed)
            raise UnreadableImageError(
                f"cannot read image {', nor '.join(listed)}"
                + (f" and {more} more" if more else "")
                + f": remove or replace {'it' if len(unreadable) == 1 else 'them'}, or "
                + SKIP_HINT
            )
        if problems:
            # Only paths that are not files are left here without skip_bad (see above).
            what = "unreadable images" if skip_bad else "paths that are not regular files"
            logger.warning(
                "skipped %d %s: %s%s",
                len(problems),
                what,
                ", ".join(list(problems)[:5]),
                " ..." if len(problems) > 5 else "",
            )
            self.records = [r for r in self.records if r.img_path not in problems]
        self.num_skipped = len(records) - len(self.records)
        if not self.records:
            raise ValueError(
                "ImageDataset: no images"
                + (" left after skipping unreadable ones" if self.num_skipped else "")
            )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        path, pid, camid = self.records[index]
        try:
            img = read_image(path)
        except UnreadableImageError as err:
            raise UnreadableImageError(f"{err}: remove or replace it, or {SKIP_HINT}") from err
        if self.transform is not None:
            img = self.transform(img)
        return img, pid, camid
