"""The layer on ViT-B/16 ReID tokens: ``pytest benchmarks --benchmark-only``.

At N = 64, 1 + 128 tokens (a 16x8 grid at 256x128), C = 768, float32: the ``a_hard_mix`` layer
(the 8x4 grid's 3 blocks) forward, and forward + backward, each against ``clone()`` of the token
tensor measured right before it (``x_clone``); with its token-norm saliency, and with a saliency
map given (the op's own passes). Then what those rows are made of: the token norm alone, the
read that the label-free forward adds to its write; the forward with C = 8, the layer's fixed
cost per call, and the shares of it that are the op's (the op alone) and the op's planning (its
body alone: no checks, draws, custom-op dispatch nor autograd), each also in units of one small
eager PyTorch op (``x_small_op``); and the forward's PyTorch path under ``torch.compile``
(inductor's fused C++ loops on CPU), the one route past eager PyTorch's passes and per-op costs
that needs no compiled code of our own.

The rows against ``clone()`` record the minor page faults per call (``faults_per_call``; the
floor's beside it): a fresh 25 MB buffer that the C library maps anew is faulted in page by
page, which a ``clone()`` mostly avoids by reusing the block freed the round before last. The
CPU targets are the op's: forward <= 1.5x clone, forward + backward <= 3x clone
(docs/performance.md#targets). ``benchmarks/gpu_check.py`` times the layer's rows on a GPU.
"""

from __future__ import annotations

import resource
from collections.abc import Callable

import pytest
import torch

from benchmarks.timing import WARMUP_ROUNDS, median_seconds
from benchmarks.token_rows import (
    GRID,
    SALIENCIES,
    compiled_path_call,
    op_body,
    op_call,
    token_call,
    token_inputs,
)
from pmm_kernels.tokens import token_norm

# A few milliseconds a call, against a floor of about one, on a VM whose timings come in bursts:
# the means of ten rounds moved the ratio 2x from run to run, so these rows take 50 rounds and
# compare medians.
TOKEN_ROUNDS = 50
GROUP = "FeatureMix on ViT-B/16 tokens (N=64, 1+128, C=768)"


@pytest.mark.parametrize("saliency", SALIENCIES)
@pytest.mark.parametrize("passes", ["forward", "forward_backward"])
def test_layer_on_vit_b16_tokens(benchmark, passes, saliency):
    tokens, call = token_call(passes, saliency)
    _against_clone(benchmark, tokens, call)


@pytest.mark.parametrize("saliency", SALIENCIES)
def test_compiled_torch_path_forward(benchmark, saliency):
    tokens, call, expected = compiled_path_call(saliency)
    assert torch.equal(call(), expected)  # compiled outside the timing, and the same bits
    _against_clone(benchmark, tokens, call)


def test_token_norm_read(benchmark):
    # The label-free saliency on its own: the forward's one read beyond its write.
    tokens, _ = token_inputs()
    _against_clone(benchmark, tokens, lambda: token_norm(GRID.patches(tokens)))


def test_layer_fixed_cost_per_call(benchmark):
    # The same call on the same grid with 8 channels: what the layer costs whatever the data
    # (checks, draws, planning, bookkeeping), against which the rows above are read.
    _, call = token_call("forward", channels=8)
    _against_small_op(benchmark, call)


def test_op_fixed_cost_per_call(benchmark):
    # The op alone, as the layer calls it, with 8 channels: the share of the fixed cost that
    # is the op's (its checks, draws and planning), not the layer's bookkeeping.
    _against_small_op(benchmark, op_call(channels=8))


def test_planning_cost_per_call(benchmark):
    # The op's body alone, with 8 channels: the planning (partners, block scores, the sort,
    # the cells, the mask) and the mix, without what wraps them.
    tokens, forward = op_body(channels=8)
    _against_small_op(benchmark, lambda: forward(tokens))


def _against_small_op(benchmark, call: Callable[[], object]) -> None:
    """Time ``call`` and give it in units of one small eager op, an add of 64 floats (about
    the cost of dispatching an op that does almost nothing), measured right before it."""
    small = torch.zeros(64)
    floor = median_seconds(lambda: small.add(1), rounds=10 * TOKEN_ROUNDS)
    _time(benchmark, call)
    benchmark.extra_info.update(
        small_op_seconds=floor,
        x_small_op=round(benchmark.stats.stats.median / floor),
    )


def _time(benchmark, call: Callable[[], object]) -> None:
    benchmark.group = GROUP
    benchmark.pedantic(call, rounds=TOKEN_ROUNDS, iterations=1, warmup_rounds=WARMUP_ROUNDS)


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _against_clone(benchmark, tokens, call: Callable[[], object]) -> None:
    """Time ``call`` against ``tokens.clone()`` measured right before it, the ratio of medians,
    with each one's minor page faults per call."""
    calls = TOKEN_ROUNDS + WARMUP_ROUNDS
    before = _minor_faults()
    floor = median_seconds(tokens.clone, rounds=TOKEN_ROUNDS)
    clone_faults = (_minor_faults() - before) / calls
    before = _minor_faults()
    _time(benchmark, call)
    benchmark.extra_info.update(
        clone_seconds=floor,
        x_clone=round(benchmark.stats.stats.median / floor, 2),
        faults_per_call=round((_minor_faults() - before) / calls),
        clone_faults_per_call=round(clone_faults),
    )
