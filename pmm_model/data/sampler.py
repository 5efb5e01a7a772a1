"""PK batch sampler: P identities x K images per batch, for the batch-hard triplet loss.

The literature's P and K are ``p`` and ``images_per_id`` here (``k`` would clash with the
number of blocks a mix replaces).

With several processes (DDP) every rank draws the same seeded global order of batches and
takes every ``num_replicas``-th one, so the ranks train on distinct batches that together are
the one-process order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

__all__ = ["PKSampler"]


class PKSampler(Sampler[list[int]]):
    """Yields batches of ``p * images_per_id`` dataset indices: ``p`` distinct ids, that many
    images each.

    Every epoch each identity's images are shuffled and cut into chunks of ``images_per_id`` (an
    identity with fewer images is drawn with replacement up to that many; a final partial chunk
    of a larger one is dropped), then batches take one chunk from each of ``p`` randomly chosen
    identities that still have chunks, until fewer than ``p`` are left (that last incomplete
    batch is dropped). The order depends only on ``seed`` and the epoch set with
    :meth:`set_epoch`, so a resumed run replays the same batches. Use it as a DataLoader's
    ``batch_sampler``.

    Distributed: global batch ``j`` goes to rank ``j % num_replicas``; the global order is cut
    to a multiple of ``num_replicas`` batches so every rank runs the same number of steps.

    Args:
        pids: identity label of each dataset index.
        p: identities per batch (>= 2, so every anchor has negatives).
        images_per_id: images per identity (>= 1), the K of P x K.
        seed: base seed.
        num_replicas: processes sharing the epoch (the DDP world size).
        rank: this process's rank, in ``[0, num_replicas)``.

    Example:
        >>> sampler = PKSampler([0, 0, 1, 1, 1, 2, 2, 2], p=2, images_per_id=2, seed=0)
        >>> batches = list(sampler)
        >>> len(batches) == len(sampler), all(len(b) == 4 for b in batches)
        (True, True)
    """

    def __init__(
        self,
        pids: Sequence[int],
        p: int,
        images_per_id: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if isinstance(p, bool) or not isinstance(p, int) or p < 2:
            raise ValueError(f"p must be an int >= 2, got {p!r}")
        if (
            isinstance(images_per_id, bool)
            or not isinstance(images_per_id, int)
            or images_per_id < 1
        ):
            raise ValueError(f"images_per_id must be an int >= 1, got {images_per_id!r}")
        self.index_by_pid: dict[int, list[int]] = defaultdict(list)
        for index, pid in enumerate(pids):
            self.index_by_pid[int(pid)].append(index)
        if len(self.index_by_pid) < p:
            raise ValueError(
                f"p={p} identities per batch but the data has only {len(self.index_by_pid)}"
            )
        if isinstance(num_replicas, bool) or not isinstance(num_replicas, int) or num_replicas < 1:
            raise ValueError(f"num_replicas must be an int >= 1, got {num_replicas!r}")
        if not isinstance(rank, int) or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be an int in [0, {num_replicas}), got {rank!r}")
        self.p, self.images_per_id, self.seed = p, images_per_id, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch, self.start = 0, 0
        if self.steps() == 0:
            raise ValueError(
                f"{len(self._global_batches())} batches of p={p} identities x "
                f"images_per_id={images_per_id} images per "
                f"epoch cannot be shared by {num_replicas} processes"
            )

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch whose batches the next iteration yields, from this rank's step
        ``start`` on (a run resumed within an epoch skips the steps it already took)."""
        self.epoch, self.start = epoch, start

    def _global_batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        chunks: dict[int, list[list[int]]] = {}
        for pid, indices in sorted(self.index_by_pid.items()):
            size = self.images_per_id
            if len(indices) < size:
                drawn = rng.choice(indices, size=size, replace=True)
            else:
                drawn = rng.permutation(indices)[: len(indices) // size * size]
            chunks[pid] = [drawn[i : i + size].tolist() for i in range(0, len(drawn), size)]
        batches = []
        while len(chunks) >= self.p:
            batch = []
            for pid in rng.choice(sorted(chunks), size=self.p, replace=False).tolist():
                batch += chunks[pid].pop()
                if not chunks[pid]:
                    del chunks[pid]
            batches.append(batch)
        return batches

    def steps(self) -> int:
        """Batches per epoch for each rank (the whole epoch, whatever ``start`` is)."""
        return len(self._global_batches()) // self.num_replicas

    def indexed_batches(self) -> Iterator[tuple[int, list[int]]]:
        """This rank's batches from step ``start``, each with its index in the global order."""
        batches = self._global_batches()
        for step in range(self.start, len(batches) // self.num_replicas):
            index = step * self.num_replicas + self.rank
            yield index, batches[index]

    def __iter__(self) -> Iterator[list[int]]:
        for _, batch in self.indexed_batches():
            yield batch

    def __len__(self) -> int:
        return self.steps() - self.start
