"""What the static GPU check reads off Triton's compiler without a GPU: a stand-in driver that
answers as a GPU of a chosen capability would, and, from the compiled kernel, its registers and
local memory (``cuobjdump -res-usage`` on the cubin) and its wide global accesses (the PTX).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # imported where used: the check's unavailable() must run first
    from triton.backends.compiler import GPUTarget

__all__ = ["WIDE", "StandInDriver", "global_accesses", "resource_usage", "triton_bin"]


def triton_bin(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


class StandInDriver:
    """The few driver calls the JIT makes to compile (not launch) for a chosen target."""

    def __init__(self, cap: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", cap, 32)

    def get_current_target(self) -> GPUTarget:
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")

    def is_active(self) -> bool:
        return True


def resource_usage(cubin: bytes) -> tuple[int | None, int | None]:
    """(registers, local bytes) of the kernel in ``cubin``, from ``cuobjdump -res-usage``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        text = subprocess.run(
            [triton_bin("cuobjdump"), "-res-usage", file.name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    registers = re.search(r"REG:(\d+)", text)
    local = re.search(r"LOCAL:(\d+)", text)
    stack = re.search(r"STACK:(\d+)", text)
    return (
        int(registers.group(1)) if registers else None,
        int(local.group(1)) + (int(stack.group(1)) if stack else 0) if local else None,
    )


WIDE = re.compile(r"\.v4\.(b32|f32|u32|s32)|\.v2\.(b64|f64|u64|s64)|\.v8\.(b32|f32)")


def global_accesses(ptx: str, op: str) -> tuple[int, int]:
    """Number of ``op.global`` instructions in ``ptx`` and how many move 16 bytes or more."""
    accesses = re.findall(rf"\b{op}\.global[^;]*", ptx)
    return len(accesses), sum(bool(WIDE.search(access)) for access in accesses)
