"""What the drop-in layer adds to the bare op: ``pytest benchmarks --benchmark-only``.

At the paper's map (N=64, C=2048, 24x8, k=3 blocks of 3x2, channel weights from a classifier):
the bare op given those weights, then the same mix through an inserted ``FeatureMix`` (argument
checks, the layer's geometry, ``classifier.weight[labels]``, the label range read). The row
records ``x_op``, the layer's time over the op's measured in the same run; the target is at most
1.02 (the layer adds at most 2 %).
"""

from __future__ import annotations

import torch
from torch import nn

import pmm_kernels
from benchmarks.op_rows import BLOCK_SIZE, DEVICE, NUM_BLOCKS, make_inputs
from benchmarks.timing import ROUNDS, WARMUP_ROUNDS, mean_seconds


def test_layer_over_the_bare_op(benchmark):
    feat, _, labels, _ = make_inputs(64, torch.float32, "weights")
    classifier = nn.Linear(feat.shape[1], 16).to(DEVICE)
    layer = pmm_kernels.FeatureMix(
        block_size=BLOCK_SIZE, num_blocks=NUM_BLOCKS, classifier=classifier
    )
    generator_seed = 0

    def bare():
        torch.manual_seed(generator_seed)
        weights = classifier.weight.detach()[labels]
        return pmm_kernels.a_hard_mix(
            feat, weights, labels, block_size=BLOCK_SIZE, num_blocks=NUM_BLOCKS
        )

    def through_layer():
        torch.manual_seed(generator_seed)
        return layer(feat, labels)

    assert torch.equal(bare(), through_layer())  # the same mix, so the same work
    op = mean_seconds(bare)
    benchmark.group = "layer over the bare op (N=64, C=2048, 24x8)"
    benchmark.pedantic(through_layer, rounds=ROUNDS, iterations=1, warmup_rounds=WARMUP_ROUNDS)
    benchmark.extra_info.update(op_seconds=op, x_op=round(benchmark.stats.stats.mean / op, 3))
