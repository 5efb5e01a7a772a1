"""A-Hard-Mix benchmarks at the paper shape: ``pytest benchmarks/ --benchmark-only``.

Each row records in ``extra_info`` the bytes the op must move at least
(docs/performance.md#bytes-per-pass: 2 x bytes(feat) per pass, plus the k-block patch with channel
weights), the effective GB/s, and its time over ``feat.clone()`` measured in the same run
(``x_clone``), the honest figure of merit on any machine. On a GPU those figures come from
``triton.testing.do_bench`` (CUDA events, L2 flushed before each run, median), and the Triton rows
also record the tile the autotuner chose. On CPU only the PyTorch path, the authors' op and the
floor run; the Triton and ``torch.compile`` rows are GPU rows and are skipped there with the reason.
``benchmarks/gpu_check.py`` times the same rows (``benchmarks/op_rows.py``) without
pytest-benchmark.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from benchmarks.op_rows import DEVICE, make_call, make_inputs, op_bytes
from benchmarks.timing import ROUNDS, WARMUP_ROUNDS, mean_seconds, synchronized
from pmm_kernels.testing.cases import ATTN_FORMS

ON_GPU = DEVICE.type == "cuda"
BATCHES = [32, 64, 128, 256] if ON_GPU else [64]
DTYPES = [torch.float32, torch.bfloat16] if ON_GPU else [torch.float32]


def gpu_seconds(fn: Callable[[], object]) -> float:
    """Median seconds per call on the GPU: CUDA events, L2 flushed before each run."""
    from triton.testing import do_bench

    return do_bench(fn, return_mode="median") / 1e3


def record(benchmark, feat: torch.Tensor, bytes_moved: float, fn: Callable[[], object]) -> None:
    # The floor is timed right before the row, in the same process state (allocator included).
    floor = gpu_seconds(feat.clone) if ON_GPU else mean_seconds(feat.clone)
    benchmark.pedantic(synchronized(fn), rounds=ROUNDS, iterations=1, warmup_rounds=WARMUP_ROUNDS)
    mean = gpu_seconds(fn) if ON_GPU else benchmark.stats.stats.mean
    if ON_GPU:
        from pmm_kernels.ops.feature_mix_triton import chosen_configs

        benchmark.extra_info.update(seconds=mean, triton_configs=chosen_configs())
    benchmark.extra_info.update(
        device=str(torch.cuda.get_device_name() if ON_GPU else "cpu"),
        bytes_moved=int(bytes_moved),
        bytes_over_feat=round(bytes_moved / (feat.numel() * feat.element_size()), 3),
        gb_per_s=round(bytes_moved / mean / 1e9, 2),
        clone_seconds=floor,
        x_clone=round(mean / floor, 2),
    )


IMPLS = ["torch", "triton", "torch_compile", "authors"]


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_clone_floor(benchmark, n, dtype):
    feat, *_ = make_inputs(n, dtype, "map")
    benchmark.group = f"a_hard_mix N={n} {dtype}"
    record(benchmark, feat, 2 * feat.numel() * feat.element_size(), feat.clone)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("passes", ["forward", "forward_backward"])
@pytest.mark.parametrize("attn_form", ATTN_FORMS)
@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_a_hard_mix(benchmark, impl, passes, attn_form, n, dtype):
    if impl in ("triton", "torch_compile") and not ON_GPU:
        pytest.skip(f"the {impl} rows are GPU rows; no CUDA device here")
    if impl == "authors" and dtype != torch.float32:
        pytest.skip("the authors' op builds a float32 mask: float32 only")
    feat, attn, labels, partners = make_inputs(n, dtype, attn_form)
    benchmark.group = f"a_hard_mix N={n} {dtype}"
    call = make_call(impl, feat, attn, labels, partners, passes)
    record(benchmark, feat, op_bytes(feat, attn_form, passes), call)
    assert math.isfinite(benchmark.stats.stats.mean)
