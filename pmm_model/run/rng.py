"""The random state of a training process: capture, restore, and per-rank seeds.

Example:
    >>> state = rng_state()
    >>> a = torch.rand(1); set_rng_state(state); bool(torch.rand(1) == a)
    True
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["RNG_KEYS", "rank_seed", "rng_state", "set_rng_state"]

RNG_KEYS = ("python", "numpy", "torch")


def rng_state() -> dict[str, Any]:
    """The python, numpy, torch (and CUDA) RNG states, as plain data and tensors."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": np_state["state"]["key"].tolist(),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states captured by :func:`rng_state`."""
    random.setstate(state["python"])
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": np_state["bit_generator"],
            "state": {"key": np.asarray(np_state["key"], dtype=np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rank_seed(seed: int, rank: int, *more: int) -> int:
    """A torch seed for ``rank`` derived from the run's ``seed`` (and e.g. an epoch).

    Distinct ranks get independent streams (``numpy.random.SeedSequence``), so PMM's mixing
    draws differ between ranks while the run stays reproducible.

    Example:
        >>> rank_seed(0, 1) == rank_seed(0, 1) != rank_seed(0, 2)
        True
    """
    return int(np.random.SeedSequence([seed, rank, *more]).generate_state(1)[0])
