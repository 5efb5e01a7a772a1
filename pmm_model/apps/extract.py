"""Embeddings of images from a trained checkpoint, computed exactly as evaluation computes them.

:class:`FeatureExtractor` loads a checkpoint (PMM or baseline) and maps images to the model's
eval-mode embeddings through evaluation's own path: the test transform of
:func:`pmm_model.data.transforms.build_transforms` at the checkpoint's input size, the records
read by :class:`pmm_model.data.images.ImageDataset` and the features taken by
:func:`pmm_model.evaluation.evaluator.extract_features` (with its flip averaging). By default each
embedding is then L2-normalised; ``normalize=False`` keeps the raw features that evaluation ranks
by Euclidean distance.

Example:
    >>> extractor = FeatureExtractor("runs/pmm-synthetic/checkpoint.pt")  # doctest: +SKIP
    >>> extractor("photos/").shape  # or a list file, PIL images, a tensor  # doctest: +SKIP
    torch.Size([120, 1536])
    >>> extractor.extract("photos/").save("photos.npz")  # names, pids, camids  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

# The Market naming "<pid>_c<camera>..." exactly as the dataset loaders parse it.
from pmm_model.data.datasets import IMAGE_EXTENSIONS, MARKET_NAME, Record
from pmm_model.data.images import ImageDataset
from pmm_model.data.loaders import check_batch_fits
from pmm_model.data.transforms import build_transforms
from pmm_model.evaluation.evaluator import extract_features
from pmm_model.run.atomic import atomic_path
from pmm_model.run.checkpoint import load_model
from pmm_model.run.runtime import resolve_device

__all__ = ["ExtractedFeatures", "FeatureExtractor", "ImageSource", "read_image_list"]

# What :meth:`FeatureExtractor.extract` accepts: see its docstring.
ImageSource = (
    str
    | os.PathLike
    | Image.Image
    | torch.Tensor
    | Sequence[str | os.PathLike | Image.Image | tuple[str, int, int]]
)

# Records whose identity and camera the layout does not name.
UNKNOWN = -1


@dataclass
class ExtractedFeatures:
    """Embeddings with what identifies each row.

    Attributes:
        features: ``(N, D)`` float32 CPU embeddings, in input order (bad images left out).
        names: ``N`` image names: paths relative to the folder or list file they came from,
            the paths as given, or ``"<index>"`` for in-memory images.
        pids: ``(N,)`` int64 identities, or None when the layout does not name them.
        camids: ``(N,)`` int64 0-based cameras, or None when the layout does not name them.
        skipped: images that could not be decoded and were left out (``skip_bad_images``).
        normalized: whether each row was L2-normalised.
        flip: whether each row averages the image's and its mirror image's features.
    """

    features: torch.Tensor
    names: list[str]
    pids: np.ndarray | None = None
    camids: np.ndarray | None = None
    skipped: list[str] = field(default_factory=list)
    normalized: bool = True
    flip: bool = False

    def save(self, path: str | os.PathLike) -> Path:
        """Write a ``.npz`` (readable with ``np.load`` without pickle) and return its path.

        Keys: ``features``, ``names``, ``skipped``, ``normalized``, ``flip``, and ``pids`` /
        ``camids`` when known.
        """
        path = Path(path)
        if path.suffix != ".npz":
            raise ValueError(f"features file must end in .npz, got {str(path)!r}")
        arrays: dict[str, Any] = {
            "features": self.features.numpy(),
            "names": np.asarray(self.names, dtype=str),
            "skipped": np.asarray(self.skipped, dtype=str),
            "normalized": np.asarray(self.normalized),
            "flip": np.asarray(self.flip),
        }
        if self.pids is not None and self.camids is not None:
            arrays |= {"pids": self.pids, "camids": self.camids}
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
        return path


def _market_ids(name: str) -> tuple[int, int] | None:
    """``(pid, 0-based camid)`` of a Market-style name, by the dataset loaders' rule: cameras
    count from 1, pids from -1 (junk)."""
    match = MARKET_NAME.match(Path(name).name)
    if match is None:
        return None
    pid, camera = int(match.group(1)), int(match.group(2))
    if pid < -1 or camera < 1:
        raise ValueError(
            f"{name}: pid {pid} or camera {camera} out of range in a Market-style name "
            "(cameras count from c1, pids from -1)"
        )
    return pid, camera - 1


def _records(paths: Sequence[Path], ids: Sequence[tuple[int, int] | None]) -> list[Record]:
    return [
        Record(str(p), *(i if i is not None else (UNKNOWN, UNKNOWN)))
        for p, i in zip(paths, ids, strict=True)
    ]


def _list_fields(line: str) -> list[str]:
    if "\t" in line:
        return [field.strip() for field in line.split("\t") if field.strip()]
    return shlex.split(line)


def read_image_list(path: str | os.PathLike) -> list[tuple[str, tuple[int, int] | None]]:
    """The entries of a list file: one image per line, ``<path> [<pid> <camid>]``.

    Fields are separated by whitespace, and a path with spaces is quoted (``"my photo.jpg" 3
    0``, shell-style); or, on a line holding a tab, fields are separated by tabs and taken as
    they are (``my photo.jpg<TAB>3<TAB>0``). A UTF-8 byte-order mark is ignored. Relative paths
    are relative to the list file's folder; blank lines and lines starting with
    ``#`` are ignored; ``camid`` is 0-based. Without the two ints the pid and camid come from a
    Market-style file name (``<pid>_c<camera>...``) when the name has that form.

    Returns:
        ``[(image path, (pid, camid) or None), ...]`` in file order.

    Raises:
        ValueError: a line that is not a path optionally followed by two ints, or no entries.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text list file of image paths") from None
    entries = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            parts = _list_fields(line)
        except ValueError as err:  # shlex: an unclosed quote
            raise ValueError(f"{path}:{line_no}: {err} in {line.strip()!r}") from None
        if len(parts) not in (1, 3) or not all(re.fullmatch(r"-?\d+", p) for p in parts[1:]):
            raise ValueError(
                f"{path}:{line_no}: expected '<image path>' or '<image path> <pid> <camid>', "
                f"got {line.strip()!r} (quote a path with spaces, or separate fields with tabs)"
            )
        image = parts[0] if Path(parts[0]).is_absolute() else str(path.parent / parts[0])
        ids = (int(parts[1]), int(parts[2])) if len(parts) == 3 else _market_ids(parts[0])
        entries.append((image, ids))
    if not entries:
        raise ValueError(f"{path}: the list file names no images")
    return entries


def _folder_images(folder: Path) -> list[Path]:
    # Sorted, like the dataset loaders, so row order is the same on every machine. Every entry
    # named as an image is kept, as the loaders keep it: ImageDataset skips and names what is
    # not a regular file (a FIFO, a folder named x.jpg) and refuses, or with skip_bad_images
    # skips, a dangling or looping symlink.
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise ValueError(f"images: no {'/'.join(IMAGE_EXTENSIONS)} files under {str(folder)!r}")
    return images


@dataclass
class _ImageFiles:
    """Image files to read, with the names and (pid, camid) the output records for them."""

    paths: list[Path]
    names: list[str]
    ids: list[tuple[int, int] | None]


def _is_pil_source(images: object) -> TypeGuard[Image.Image | Sequence[Image.Image]]:
    return isinstance(images, Image.Image) or (
        isinstance(images, Sequence)
        and not isinstance(images, str)
        and bool(images)
        and all(isinstance(im, Image.Image) for im in images)
    )


def _is_record(item: object) -> bool:
    return (
        isinstance(item, tuple)
        and len(item) == 3
        and isinstance(item[0], (str, os.PathLike))
        and all(isinstance(i, int) and not isinstance(i, bool) for i in item[1:])
    )


def _path_files(path: Path) -> _ImageFiles:
    """A folder's images, one image file, or the images a list file names."""
    if path.is_dir():
        paths = _folder_images(path)
        names = [p.relative_to(path).as_posix() for p in paths]
        return _ImageFiles(paths, names, [_market_ids(n) for n in names])
    if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
        return _ImageFiles([path], [path.name], [_market_ids(path.name)])
    if path.is_file():
        entries = read_image_list(path)
        paths = [Path(image) for image, _ in entries]
        names = [os.path.relpath(p, path.parent) for p in paths]
        return _ImageFiles(paths, names, [i for _, i in entries])
    raise FileNotFoundError(f"images: no such folder or list file: {str(path)!r}")


def _is_path_sequence(images: object) -> TypeGuard[Sequence[str | os.PathLike]]:
    return (
        isinstance(images, Sequence)
        and bool(images)
        and all(isinstance(p, (str, os.PathLike)) for p in images)
    )


def _not_a_source(images: object) -> TypeError:
    kinds = (
        sorted({type(im).__name__ for im in images})
        if isinstance(images, Sequence)
        else type(images).__name__
    )
    return TypeError(
        "images must be a folder, a list file, image paths, (path, pid, camid) records, "
        f"PIL images or a tensor, got {kinds or 'an empty sequence'}"
    )


def _image_files(images: object) -> _ImageFiles:
    """The files a folder, a list file, a sequence of paths or of records names.

    A path that does not exist at all is refused here; one that exists but is not a readable
    image (a FIFO, a folder, a dangling symlink) is left to ImageDataset's rules.
    """
    if isinstance(images, (str, os.PathLike)):
        files = _path_files(Path(images))
    elif _is_path_sequence(images):
        paths = [Path(p) for p in images]
        names = [str(p) for p in paths]
        files = _ImageFiles(paths, names, [_market_ids(n) for n in names])
    elif isinstance(images, Sequence) and images and all(_is_record(r) for r in images):
        paths = [Path(r[0]) for r in images]
        files = _ImageFiles(paths, [str(p) for p in paths], [(r[1], r[2]) for r in images])
    else:
        raise _not_a_source(images)
    missing = [str(p) for p in files.paths if not os.path.lexists(p)]
    if missing:
        raise FileNotFoundError(
            f"images: {len(missing)} files do not exist, e.g. {', '.join(missing[:3])}"
        )
    return files


class _TensorBatches:
    """``(images, pids, camids)`` batches of preprocessed images, as a test loader yields them."""

    def __init__(self, images: torch.Tensor, batch_size: int) -> None:
        self.images, self.batch_size = images, batch_size

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[int], list[int]]]:
        for i in range(0, len(self.images), self.batch_size):
            batch = self.images[i : i + self.batch_size]
            yield batch, [UNKNOWN] * len(batch), [UNKNOWN] * len(batch)


class FeatureExtractor:
    """A trained checkpoint as a function from images to embeddings.

    Args:
        checkpoint: ``checkpoint.pt`` written by training (PMM or baseline).
        device: torch device; default: CUDA when available, else CPU.
        flip: average each feature with that of the horizontally flipped image (evaluation's
            ``--flip``).
        amp: run the network under float16 autocast (CUDA only); the features are returned
            in float32 either way.
        batch_size: images per forward pass.
        workers: loader processes decoding image files (0: in this process).
        normalize: L2-normalise each embedding (off: evaluation's raw features).
        progress: show a tqdm progress bar over the batches.

    Attributes:
        model: the network, in eval mode on ``device``.
        args: the checkpoint's training configuration (``model``, ``backbone``, ``height``,
            ``width``, ...).
        transform: the test transform (PIL image -> normalised ``(3, height, width)`` tensor).

    Raises:
        FileNotFoundError: no checkpoint file.
        ValueError: not a training checkpoint, a bad device, ``amp`` off CUDA, or a batch
            size or worker count out of range.

    Example:
        >>> extractor = FeatureExtractor("checkpoint.pt", flip=True)  # doctest: +SKIP
        >>> extractor(["a.jpg", "b.jpg"]).norm(dim=1)  # doctest: +SKIP
        tensor([1.0000, 1.0000])
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        device: str | torch.device | None = None,
        flip: bool = False,
        amp: bool = False,
        batch_size: int = 64,
        workers: int = 0,
        normalize: bool = True,
        progress: bool = False,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be an int >= 0, got {workers!r}")
        self.device = resolve_device(None if device is None else str(device))
        if amp and self.device.type != "cuda":
            raise ValueError(f"amp=True needs a CUDA device, got {str(self.device)!r}")
        model, self.args = load_model(checkpoint, map_location="cpu")
        self.model: nn.Module = model.to(self.device)
        self.height, self.width = self.args.height, self.args.width
        check_batch_fits(batch_size, self.height, self.width, "extraction")
        self.transform = build_transforms(self.height, self.width, is_train=False)
        self.flip, self.amp, self.normalize = flip, amp, normalize
        self.batch_size, self.workers, self.progress = batch_size, workers, progress

    def __call__(self, images: ImageSource) -> torch.Tensor:
        """The ``(N, D)`` float32 CPU embeddings of ``images`` (see :meth:`extract`)."""
        return self.extract(images).features

    def extract(self, images: ImageSource, skip_bad_images: bool = False) -> ExtractedFeatures:
        """Embeddings of ``images`` with their names (and pids/camids where the layout names them).

        Args:
            images: one of

                - a folder: every image file under it (recursively, sorted by path), named by
                  path relative to the folder;
                - an image file, or a list file (any other file): see :func:`read_image_list`;
                - a sequence of image paths;
                - a sequence of ``(path, pid, camid)`` records, e.g. a dataset split
                  (:class:`~pmm_model.data.datasets.ReIDDataset`'s ``query``);
                - a PIL image or a sequence of them (resized and normalised here);
                - a float tensor ``(3, H, W)`` or ``(N, 3, H, W)`` already preprocessed as
                  :attr:`transform` does, at the checkpoint's ``height`` x ``width``.

                Pids and camids come from records, a list file's columns or Market-style file
                names (``<pid>_c<camera>...``); they are kept when every image has them.
            skip_bad_images: leave out image files that cannot be decoded (listed in
                ``skipped``) instead of raising on the first one. Applies to paths only.

        Raises:
            TypeError: ``images`` is none of the above.
            ValueError: no images, a tensor of the wrong shape, or every image unreadable.
            FileNotFoundError: a folder or list file that does not exist.
            OSError: an undecodable image without ``skip_bad_images`` (the message names it).
        """
        if isinstance(images, torch.Tensor) or _is_pil_source(images):
            batch = self.preprocess(images)
            return self._extract_loader(
                _TensorBatches(batch, self.batch_size), [str(i) for i in range(len(batch))]
            )
        files = _image_files(images)
        records = _records(files.paths, files.ids)
        dataset = ImageDataset(records, self.transform, skip_bad=skip_bad_images)
        kept = {r.img_path for r in dataset.records}
        name_of = dict(zip((r.img_path for r in records), files.names, strict=True))
        loader = DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
        )
        kept_ids = [i for i, r in zip(files.ids, records, strict=True) if r.img_path in kept]
        out = self._extract_loader(
            loader,
            [name_of[r.img_path] for r in dataset.records],
            known_ids=all(i is not None for i in kept_ids),
        )
        out.skipped = [name_of[r.img_path] for r in records if r.img_path not in kept]
        return out

    def preprocess(self, images: ImageSource, limit: int | None = None) -> torch.Tensor:
        """The network's input for ``images`` (first ``limit`` only): ``(N, 3, H, W)`` float32.

        Accepts what :meth:`extract` does; an undecodable file raises ``OSError``.
        """
        if isinstance(images, torch.Tensor):
            return self._check_tensor(images)[:limit]
        if _is_pil_source(images):
            pictures = [images] if isinstance(images, Image.Image) else list(images)[:limit]
            return torch.stack([self.transform(im.convert("RGB")) for im in pictures])
        files = _image_files(images)
        dataset = ImageDataset(_records(files.paths[:limit], files.ids[:limit]), self.transform)
        return torch.stack([dataset[i][0] for i in range(len(dataset))])

    def _check_tensor(self, images: torch.Tensor) -> torch.Tensor:
        batch = images[None] if images.ndim == 3 else images
        expected = (3, self.height, self.width)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != expected or not batch.is_floating_point():
            raise ValueError(
                f"images: a tensor must be float (3, {self.height}, {self.width}) or "
                f"(N, 3, {self.height}, {self.width}), preprocessed as FeatureExtractor.transform "
                f"does; got {images.dtype} {tuple(images.shape)}"
            )
        if not len(batch):
            raise ValueError("images: the tensor holds no images")
        return batch.float()

    def _extract_loader(
        self, loader: Iterable, names: list[str], known_ids: bool = False
    ) -> ExtractedFeatures:
        batches = tqdm(loader, desc="extract", unit="batch", disable=not self.progress)
        # autocast is thread-local state, so it reaches evaluation's forward passes unchanged.
        autocast = (
            torch.autocast("cuda", dtype=torch.float16) if self.amp else contextlib.nullcontext()
        )
        with autocast:
            features, pids, camids = extract_features(self.model, batches, self.device, self.flip)
        if self.normalize:
            features = nn.functional.normalize(features, dim=1)
        return ExtractedFeatures(
            features,
            names,
            pids if known_ids else None,
            camids if known_ids else None,
            normalized=self.normalize,
            flip=self.flip,
        )
