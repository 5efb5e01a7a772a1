"""Test set-up: without a CUDA device, Triton kernels run under the interpreter on CPU.

``TRITON_INTERPRET`` must be set before triton is imported (importing torch doesn't import it);
on a machine with a GPU it stays unset, so the kernels' tests compile and run on CUDA.
"""

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked ``gpu`` need a CUDA device: without one they are skipped, saying so."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (marker gpu); run by make gpu-check")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def seeded_global_rng() -> None:
    """Each test starts from one global torch RNG state, so draws made without a generator repeat.

    The process's own initial seed differs from run to run.
    """
    torch.manual_seed(0)


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Every device this machine has: the PyTorch path's tests run on CUDA too when present."""
    return torch.device(request.param)


@pytest.fixture
def triton_device() -> torch.device:
    """Where the Triton kernels run: the GPU when there is one, else the interpreter on CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """The tiny synthetic set (oracles.TINY_SET), written once per session; tests only read it."""
    from oracles import tiny_synthetic_set  # imports pmm_kernels: only once TRITON_INTERPRET is set

    return tiny_synthetic_set(tmp_path_factory.mktemp("data"))
