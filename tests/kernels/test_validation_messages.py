"""Issue 25 item 8: the kernels' messages name the argument at fault, in one line.

A block size far beyond any map is a ``ValueError`` naming ``block_size`` (it was a
RuntimeError from the allocator, or a message about ``num_blocks``); a block larger than the
map is clipped to it, as edge blocks are, before the op allocates anything; a batch mapping
with keys of mixed types is described, not a ``TypeError`` from sorting them.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pmm_kernels
from pmm_kernels import FeatureMix, labels_from_batch

LABELS = torch.tensor([0, 0, 1, 1])
FEAT = torch.randn(4, 8, 6, 4, generator=torch.Generator().manual_seed(0))


def _attn(mode: str) -> torch.Tensor | None:
    return torch.rand(4, 8, generator=torch.Generator().manual_seed(1)) if "a_" in mode else None


@pytest.mark.parametrize("block_size", [(10**12, 10**12), (10**30, 1), (2, 65537)])
@pytest.mark.parametrize("mode", list(pmm_kernels.MODES))
def test_an_absurd_block_size_is_a_value_error_naming_it(mode, block_size):
    with pytest.raises(ValueError, match=r"^block_size must be two ints in \[1, 65536\]") as err:
        pmm_kernels.feature_mix(FEAT, LABELS, _attn(mode), mode=mode, block_size=block_size)
    assert str(block_size) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"^block_size must be two ints in \[1, 65536\]"):
        FeatureMix(mode, block_size=block_size)  # the layer refuses it when built


@pytest.mark.parametrize("mode", [m for m in pmm_kernels.MODES if m != "batch_drop"])
def test_a_block_larger_than_the_map_is_the_whole_map(mode):
    def mixed(block_size):
        return pmm_kernels.feature_mix(
            FEAT, LABELS, _attn(mode), mode=mode, block_size=block_size, num_blocks=1,
            generator=torch.Generator().manual_seed(2), backend="torch",
        )  # fmt: skip

    out, info = mixed((65536, 65536))
    expected, expected_info = mixed((6, 4))
    assert torch.equal(out, expected) and torch.equal(info.mask, expected_info.mask)
    assert info.mask.flatten(1).all(dim=1).any()  # a mixed sample lost its whole map


class BatchModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.mix = FeatureMix("cutmix", block_size=(1, 1), num_blocks=1)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.mix(self.conv(batch["images"]))


@pytest.mark.parametrize("batch", [{"images": 0, 1: 0, None: 0}, {2: 0, "b": 0, (1,): 0}])
def test_labels_from_batch_names_keys_of_mixed_types(batch):
    model = BatchModel().train()
    labels_from_batch(model)
    batch = {key: torch.zeros(4, 3, 2, 2) if key == "images" else value
             for key, value in batch.items()}  # fmt: skip
    with pytest.raises(ValueError, match=r"mapping holding 'targets', got keys \[") as err:
        model(batch)
    assert all(repr(key) in str(err.value) for key in batch)
