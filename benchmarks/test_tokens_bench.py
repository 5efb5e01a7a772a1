"""The layer on ViT-B/16 ReID tokens: ``pytest benchmarks --benchmark-only``.

At N = 64, 1 + 128 tokens (a 16x8 grid at 256x128), C = 768, float32: the ``a_hard_mix`` layer
(the 8x4 grid's 3 blocks) forward, and forward + backward, each against ``clone()`` of the token
tensor measured right before it (``x_clone``); with its token-norm saliency, and with a saliency
map given (the op's own passes); and the forward with C = 8, the layer's fixed cost per call.
The CPU targets are the
op's: forward <= 1.5x clone, forward + backward <= 3x clone (docs/performance.md#targets).
``benchmarks/gpu_check.py`` times the same rows on a GPU.
"""

from __future__ import annotations

import pytest

from benchmarks.timing import WARMUP_ROUNDS, median_seconds
from benchmarks.token_rows import SALIENCIES, token_call

# A few milliseconds a call, against a floor that allocates and faults in 25 MB each time, on a
# VM whose timings come in bursts: the means of ten rounds moved the ratio 2x from run to run,
# so these rows take 50 rounds and compare medians.
TOKEN_ROUNDS = 50


@pytest.mark.parametrize("saliency", SALIENCIES)
@pytest.mark.parametrize("passes", ["forward", "forward_backward"])
def test_layer_on_vit_b16_tokens(benchmark, passes, saliency):
    tokens, call = token_call(passes, saliency)
    floor = median_seconds(tokens.clone, rounds=TOKEN_ROUNDS)
    benchmark.group = "FeatureMix on ViT-B/16 tokens (N=64, 1+128, C=768)"
    benchmark.pedantic(call, rounds=TOKEN_ROUNDS, iterations=1, warmup_rounds=WARMUP_ROUNDS)
    benchmark.extra_info.update(
        clone_seconds=floor, x_clone=round(benchmark.stats.stats.median / floor, 2)
    )


def test_layer_fixed_cost_per_call(benchmark):
    # The same call on the same grid with 8 channels: what the layer costs whatever the data
    # (checks, draws, planning, bookkeeping), against which the rows above are read.
    _, call = token_call("forward", channels=8)
    benchmark.group = "FeatureMix on ViT-B/16 tokens (N=64, 1+128, C=768)"
    benchmark.pedantic(call, rounds=TOKEN_ROUNDS, iterations=1, warmup_rounds=WARMUP_ROUNDS)
