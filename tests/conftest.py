"""Test set-up: Triton kernels run under the interpreter on CPU (set before triton is imported)."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Every device this machine has: the kernels' tests run on CUDA too when a GPU is present."""
    return torch.device(request.param)
