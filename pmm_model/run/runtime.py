"""Where training runs: device resolution, the torch.distributed process group, and signals.

One process per device. Under ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``) :func:`init_distributed` joins the process group (NCCL on CUDA, gloo on CPU)
and each process takes the GPU of its local rank; without those variables it is a plain
one-process run and nothing touches ``torch.distributed``. :class:`StopSignals` turns SIGTERM
and SIGINT into a flag the training loop polls, so a run stops at a step boundary.

Example:
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> Distributed().world_size  # a plain run
    1
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

__all__ = ["Distributed", "StopSignals", "init_distributed", "resolve_device"]

logger = logging.getLogger("pmm_model.run.runtime")

_T = TypeVar("_T")

# Rank 0 evaluates alone while the others wait in a collective; the default 10-30 minute
# timeouts would kill a long evaluation on a large gallery.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=2)


def resolve_device(name: str | None, local_rank: int = 0) -> torch.device:
    """The torch device for ``name``; ``None`` means CUDA when available, else CPU.

    Under ``torchrun`` a bare ``"cuda"`` (or the default) becomes ``cuda:<local_rank>``, one
    GPU per process.

    Raises:
        ValueError: ``name`` is not a torch device, or names CUDA (or a CUDA device index) on
            a machine without it.

    Example:
        >>> resolve_device(None if not torch.cuda.is_available() else "cpu").type
        'cpu'
    """
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"not a torch device: {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {name!r}: use cpu or cuda[:N]")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name!r} requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        elif device.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise ValueError(f"{name!r} requested but this machine has {count} CUDA devices")
    return device


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job: ``rank`` of ``world_size``, ``local_rank`` on its node.

    The collectives below are no-ops (or identities) in a one-process run.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True when the job has more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that logs, checkpoints and writes metrics."""
        return self.rank == 0

    def any(self, flags: list[bool], device: torch.device) -> list[bool]:
        """Element-wise OR of ``flags`` over all ranks (every rank must call it)."""
        if not self.enabled:
            return list(flags)
        backend_device = device if dist.get_backend() == "nccl" else torch.device("cpu")
        tensor = torch.tensor([float(f) for f in flags], device=backend_device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return [bool(v) for v in tensor.tolist()]

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (picklable objects)."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.enabled:
            return [value]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def on_main(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn`` on rank 0 alone; its result, or its exception, reaches every rank (every
        rank must call it).

        Example:
            >>> Distributed().on_main(max, 2, 3)
            3
        """
        outcome: tuple[bool, Any] = (True, None)
        if self.is_main:
            try:
                outcome = (True, fn(*args))
            except Exception as err:  # raised below on every rank
                outcome = (False, err)
        outcome = self.broadcast(outcome)
        if not outcome[0]:
            raise outcome[1]
        return outcome[1]

    def disagreement(self, options: dict[str, Any]) -> dict[str, list[Any]]:
        """The keys of ``options`` whose values differ between ranks, each with its value on
        every rank (one all-gather; every rank must call it and gets the same answer).

        Example:
            >>> Distributed().disagreement({"epochs": 2})  # one process agrees with itself
            {}
        """
        everyone = self.gather(options)
        keys = sorted({key for each in everyone for key in each})
        values = {key: [each.get(key) for each in everyone] for key in keys}
        return {key: v for key, v in values.items() if any(x != v[0] for x in v)}

    def close(self) -> None:
        """Leave the process group (if this object's job joined one)."""
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device_name: str | None) -> tuple[Distributed, torch.device]:
    """Join the ``torchrun`` process group if there is one; returns it and this rank's device.

    Raises:
        ValueError: a bad device name (see :func:`resolve_device`).
        RuntimeError: the rendezvous fails.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    ctx = Distributed(
        rank=int(os.environ.get("RANK", "0")),
        world_size=world_size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    device = resolve_device(device_name, ctx.local_rank)
    if ctx.enabled and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        store, rank, world_size = next(dist.rendezvous("env://", timeout=COLLECTIVE_TIMEOUT))
        store.set_timeout(COLLECTIVE_TIMEOUT)
        # torchrun's agent serves one store to every attempt (--max-restarts): the keys of an
        # earlier one (the dead workers' addresses) would be read as this one's, and the
        # connection to them fails or hangs. Each attempt gets its own key space.
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
        if attempt is not None:
            store = dist.PrefixStore(f"attempt-{attempt}/", store)
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            store=store,
            rank=rank,
            world_size=world_size,
            timeout=COLLECTIVE_TIMEOUT,
            device_id=device if device.type == "cuda" else None,
        )
    return ctx, device


class StopSignals:
    """Records SIGTERM/SIGINT instead of dying; a second SIGINT raises KeyboardInterrupt.

    Used as a context manager around a run: inside it the first signal only sets
    :attr:`received` (the signal number), which the training loop polls between steps.

    Python runs signal handlers in the main thread between bytecodes, so a main thread blocked
    in a collective that never ends (a rank hangs or died) would never see the signal. With
    ``grace`` set, a watchdog thread learns of the signal at once (``signal.set_wakeup_fd``)
    and, if the context is not left within ``grace`` seconds, ends the process with status
    128 + signal number, keeping whatever was last checkpointed.

    Args:
        grace: seconds the run has to stop after a signal; None waits as long as it takes.
        preempt: a scheduler's pre-emption signal handled as SIGTERM is (``SIGUSR1``: SLURM's
            ``--signal=USR1@90``), or None.

    Example:
        >>> with StopSignals() as signals:
        ...     signals.received is None
        True
    """

    def __init__(self, grace: float | None = None, preempt: str | None = "SIGUSR1") -> None:
        self.SIGNALS: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)
        if preempt is not None:
            self.SIGNALS += (signal.Signals[preempt],)
        self.received: int | None = None
        self.grace = grace
        self._previous: dict[int, Any] = {}
        self._previous_fd = -1
        self._writer: socket.socket | None = None  # the wakeup fd, while a watchdog runs
        self._left = threading.Event()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.received is None:
            self.received = signum

    def _watch(self, reader: socket.socket) -> None:
        """The watchdog thread: wait for a signal, then for the context to be left in time."""
        with reader:
            while True:
                try:
                    data = reader.recv(1)
                except OSError:
                    return
                if not data or self._left.is_set():
                    return  # the context was left (the writer is closed)
                if data[0] in self.SIGNALS:
                    break
        signum = data[0]
        if self._left.wait(self.grace):
            return
        message = (
            f"{signal.Signals(signum).name}: the run did not stop within {self.grace:g} s "
            "(a process waits in a collective that does not end: another rank hangs or "
            "died); exiting, the last checkpoint is kept"
        )
        logger.error("%s", message)
        sys.stderr.write(f"error: {message}\n")
        sys.stderr.flush()
        os._exit(128 + signum)

    def __enter__(self) -> StopSignals:
        self.received = None
        self._left.clear()
        # Python delivers signals to the main thread only; elsewhere keep the defaults.
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
            if self.grace is not None:
                reader, writer = socket.socketpair()
                writer.setblocking(False)
                self._previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
                self._writer = writer
                threading.Thread(
                    target=self._watch, args=(reader,), name="pmm-stop-watchdog", daemon=True
                ).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._left.set()
        if self._writer is not None:
            signal.set_wakeup_fd(self._previous_fd)
            self._writer.close()  # the watchdog's recv returns b"" and the thread ends
            self._writer = None
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
