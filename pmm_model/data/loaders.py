"""DataLoaders for training (PK batches, seeded augmentation) and testing (query, gallery).

Training augmentation is seeded per sample from ``(seed, epoch, global batch, position)``
rather than by the loader workers' random streams, so the images of a step do not depend on
the number of workers or processes, and a run resumed in the middle of an epoch sees exactly
the images the uninterrupted run would have seen.

Example:
    >>> loader, sampler = build_train_loader(data.train, config)  # doctest: +SKIP
    >>> sampler.set_epoch(0)  # doctest: +SKIP
    >>> images, pids, camids = next(iter(loader))  # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import multiprocessing
import signal
from collections.abc import Iterator, Sequence, Sized
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pmm_model.data.datasets import Record, ReIDDataset, check_protocol
from pmm_model.data.images import ImageDataset
from pmm_model.data.sampler import PKSampler
from pmm_model.data.transforms import build_transforms

__all__ = [
    "SeededBatches",
    "SeededDataset",
    "available_memory",
    "build_test_loaders",
    "build_train_loader",
    "check_batch_fits",
]

# Bytes per input pixel of one image that a forward pass holds at least: the float32 input
# (3 channels) and a ResNet's first convolution output (64 channels at a quarter of the
# pixels, 16 floats per input pixel). A lower bound: a run refused by it could never fit.
_BYTES_PER_PIXEL = 4 * (3 + 16)


def available_memory() -> int | None:
    """Bytes this process can still allocate: ``MemAvailable`` of ``/proc/meminfo``, or the
    address-space limit (``ulimit -v``) if lower; None where neither is known."""
    import resource

    limits = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft != resource.RLIM_INFINITY:
        limits.append(soft)
    return min(limits) if limits else None


def check_batch_fits(batch_size: int, height: int, width: int, what: str) -> None:
    """Refuse, before any image is read, a batch whose forward pass cannot fit in memory.

    Raises:
        ValueError: one line: how much a batch needs at least and how much memory there is.
    """
    needed = batch_size * height * width * _BYTES_PER_PIXEL
    have = available_memory()
    if have is not None and needed > have:
        raise ValueError(
            f"{what}: a batch of {batch_size} images of {height}x{width} needs at least "
            f"{needed / 2**30:.1f} GiB of memory, and {have / 2**30:.1f} GiB is available; "
            "lower the batch size or the input size"
        )


class SeededBatches(Sampler[list[tuple[int, int]]]):
    """A :class:`PKSampler`'s batches with a seed for each sample: ``[(index, seed), ...]``."""

    def __init__(self, sampler: PKSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        s = self.sampler
        for global_index, batch in s.indexed_batches():
            seeds = np.random.SeedSequence([s.seed, s.epoch, global_index]).generate_state(
                len(batch), dtype=np.uint64
            )
            yield [(index, int(seed)) for index, seed in zip(batch, seeds, strict=True)]

    def __len__(self) -> int:
        return len(self.sampler)


class SeededDataset(Dataset):
    """Item ``(index, seed)`` is ``dataset[index]`` with torch's RNG seeded by ``seed``.

    The caller's RNG state is restored afterwards, so loading in the main process
    (``workers=0``) does not shift the training stream.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        # A map-style dataset has a length; torch's Dataset type does not declare one.
        return len(cast(Sized, self.dataset))

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


def _ignore_stop_signals(worker_id: int) -> None:
    # SIGINT (Ctrl-C reaches the whole process group) and SIGTERM (a scheduler may signal every
    # process) are for the main process, which finishes the step and checkpoints; a worker
    # that died of them would break that step. Workers still exit when the main process does:
    # torch's watchdog ends them when it dies, and _end_workers_at_exit when it exits.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _end_workers_at_exit() -> None:
    """Kill the loader workers still alive when the main process exits.

    An error raised in the middle of an epoch (an image corrupt past its header, shared memory
    running out) keeps the loader's iterator alive in its traceback until the interpreter
    exits, so torch never shuts its workers down; multiprocessing's exit handler then sends
    them SIGTERM, which they ignore, and waits for them forever. Registered after
    multiprocessing's handler, this one runs first. Workers only read images: killing them
    loses nothing. Torch's SIGCHLD handler, which raises when a worker dies, is reset first,
    or the first death would end this handler before it reached the other workers.
    """
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    workers = [child for child in multiprocessing.active_children() if child.daemon]
    for worker in workers:
        worker.kill()
    for worker in workers:
        worker.join(timeout=5)


atexit.register(_end_workers_at_exit)


def build_train_loader(
    records: Sequence[Record],
    config: Any,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> tuple[DataLoader, PKSampler]:
    """The training loader and its sampler (call ``sampler.set_epoch`` before each epoch).

    With ``config.skip_bad_images`` unreadable images are dropped first and the sampler is
    built on the images that remain.

    Args:
        records: the train split.
        config: a training configuration (:class:`pmm_model.run.config.TrainConfig`: its
            ``height``, ``width``, ``ids_per_batch``, ``images_per_id``, ``seed``, ``workers``,
            ``cutout``, ``random_erasing``, ``skip_bad_images``).
        rank: this process's rank.
        world_size: the number of processes sharing each epoch.
        pin_memory: pin batches (for CUDA).

    Raises:
        ValueError: a batch that cannot fit in memory (:func:`check_batch_fits`), no images
            left, or too few identities / batches for ``p``, ``k`` and
            ``world_size``.
    """
    check_batch_fits(
        config.ids_per_batch * config.images_per_id,
        config.height,
        config.width,
        "training",
    )
    transform = build_transforms(
        config.height, config.width, True, config.cutout, config.random_erasing
    )
    dataset = ImageDataset(records, transform, skip_bad=config.skip_bad_images)
    sampler = PKSampler(
        [r.pid for r in dataset.records],
        config.ids_per_batch,
        images_per_id=config.images_per_id,
        seed=config.seed,
        num_replicas=world_size,
        rank=rank,
    )
    loader = DataLoader(
        SeededDataset(dataset),
        batch_sampler=SeededBatches(sampler),
        num_workers=config.workers,
        pin_memory=pin_memory,
        worker_init_fn=_ignore_stop_signals,
        # Workers draw their base seed from this generator, not from the global RNG that the
        # model's mixing uses, so creating an epoch's iterator leaves the training stream alone.
        generator=torch.Generator().manual_seed(config.seed),
    )
    return loader, sampler


def build_test_loaders(
    data: ReIDDataset,
    height: int,
    width: int,
    batch_size: int = 128,
    workers: int = 0,
    skip_bad_images: bool = False,
    pin_memory: bool = False,
) -> tuple[DataLoader, DataLoader]:
    """Unshuffled ``(query_loader, gallery_loader)`` with the test transform.

    Every image is checked first (see :class:`~pmm_model.data.images.ImageDataset`), and the
    protocol again on the images left (:func:`~pmm_model.data.datasets.check_protocol`).

    Raises:
        UnreadableImageError: an image that cannot be read, without ``skip_bad_images``.
        ValueError: a batch that cannot fit in memory (:func:`check_batch_fits`), no images
            left, or no query with a valid gallery match among them.
    """
    check_batch_fits(batch_size, height, width, "testing")
    transform = build_transforms(height, width, is_train=False)
    query, gallery = (
        ImageDataset(records, transform, skip_bad=skip_bad_images)
        for records in (data.query, data.gallery)
    )
    if query.num_skipped or gallery.num_skipped:
        check_protocol(query.records, gallery.records, f"dataset {data.name!r} (images left)")
    query_loader, gallery_loader = (
        DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=workers,
            pin_memory=pin_memory,
            worker_init_fn=_ignore_stop_signals,
        )
        for dataset in (query, gallery)
    )
    return query_loader, gallery_loader
