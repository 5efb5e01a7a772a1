"""Test set-up: without a CUDA device, Triton kernels run under the interpreter on CPU.

``TRITON_INTERPRET`` must be set before triton is imported (importing torch doesn't import it);
on a machine with a GPU it stays unset, so the kernels' tests compile and run on CUDA.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Every device this machine has: the PyTorch path's tests run on CUDA too when present."""
    return torch.device(request.param)


@pytest.fixture
def triton_device() -> torch.device:
    """Where the Triton kernels run: the GPU when there is one, else the interpreter on CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
