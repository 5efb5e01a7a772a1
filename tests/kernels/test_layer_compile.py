"""The inserted layer under torch.compile: one graph for every batch size, as without it, and
clear errors for what cannot be compiled. Dynamo only (a counting backend), so it runs fast."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounter

from pmm_kernels import FeatureMix, insert_feature_mix, labels_from_batch, mix_labels

BATCH_SIZES = (16, 12, 8, 4)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.blocks = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU())
        self.fc = nn.Linear(4, 3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(images)).mean(dim=(2, 3)))


def graphs(mode: str | None, dynamic: bool | None) -> int:
    """Graphs dynamo makes for training forwards at BATCH_SIZES."""
    torch.manual_seed(0)
    net = TinyNet()
    if mode is not None:
        classifier = net.fc if mode == "a_hard_mix" else None
        insert_feature_mix(net, "stem", FeatureMix(mode, grid=(4, 2), classifier=classifier))
    counter = CompileCounter()
    compiled = torch.compile(net, backend=counter, fullgraph=True, dynamic=dynamic)
    for n in BATCH_SIZES:
        labels = torch.arange(n) % 3
        if mode is None:
            compiled(torch.randn(n, 3, 8, 4))
        else:
            with mix_labels(net, labels):
                compiled(torch.randn(n, 3, 8, 4)).sum().backward()
            assert net.mix_after_stem.last_info.mask.shape == (n, 8, 4)
    return counter.frame_count


@pytest.mark.parametrize("dynamic", [None, True])
@pytest.mark.parametrize("mode", ["a_hard_mix", "cutmix"])
def test_the_layer_compiles_once_for_every_batch_size(mode, dynamic):
    assert graphs(mode, dynamic) == graphs(None, dynamic)


def test_labels_from_batch_compiles_once_for_every_batch_size():
    class BatchNet(TinyNet):
        def forward(self, batch: dict) -> torch.Tensor:
            return super().forward(batch["images"])

    net = BatchNet()
    insert_feature_mix(net, "stem", FeatureMix("hard_mix", grid=(4, 2)))
    labels_from_batch(net, key="targets")
    counter = CompileCounter()
    compiled = torch.compile(net, backend=counter, fullgraph=True)
    for n in BATCH_SIZES:
        compiled({"images": torch.randn(n, 3, 8, 4), "targets": torch.arange(n) % 3})
        assert net.mix_after_stem.last_info.mask.any() and net.mix_after_stem.labels is None
    assert counter.frame_count == graphs(None, None)


def test_a_generator_under_fullgraph_gets_the_clear_error():
    mix = FeatureMix("cutmix", grid=(4, 2), generator=torch.Generator().manual_seed(0))
    compiled = torch.compile(lambda x: mix(x), backend="eager", fullgraph=True)
    with pytest.raises(torch._dynamo.exc.Unsupported) as error:
        compiled(torch.randn(4, 3, 8, 4))
    # The reason is in the message itself, not in dynamo's debug context.
    first = str(error.value).split("Developer debug context")[0]
    assert "pass generator=None (build the layer without one)" in first


def test_a_generator_without_fullgraph_still_mixes():
    mix = FeatureMix("cutmix", grid=(4, 2), generator=torch.Generator().manual_seed(0))
    out = torch.compile(lambda x: mix(x), backend="eager")(torch.ones(4, 3, 8, 4))
    assert mix.last_info.mask.any() and out.shape == (4, 3, 8, 4)


def test_a_layer_that_never_runs_under_fullgraph_says_so():
    class Blockwise(TinyNet):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            x = self.stem(images)
            for block in self.blocks:
                x = block(x)
            return self.fc(x.mean(dim=(2, 3)))

    net = Blockwise()
    insert_feature_mix(net, "blocks", FeatureMix("cutout", grid=(4, 2)))
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    with pytest.raises(
        torch._dynamo.exc.Unsupported,
        match="did not run in a training forward of the compiled model",
    ):
        compiled(torch.randn(4, 3, 8, 4))
    torch._dynamo.reset()
    with pytest.raises(ValueError, match=r"after='blocks'\): 'blocks' did not run"):
        torch.compile(net, backend="eager")(torch.randn(4, 3, 8, 4))


def test_a_layer_switched_to_eval_while_the_model_trains_compiles():
    # torchreid's fixbase epochs under fullgraph: no mix, and no error (the warning is eager's).
    net = TinyNet()
    insert_feature_mix(net, "stem", FeatureMix("cutout", grid=(4, 2)))
    net.mix_after_stem.eval()
    torch.compile(net, backend="eager", fullgraph=True)(torch.randn(4, 3, 8, 4))
    assert net.mix_after_stem.last_info is None


class OneConv(nn.Module):
    """The issue's pattern: a one-conv net, the layer after its stem (a bare Conv2d)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.stem(images).mean((2, 3)))


@pytest.mark.parametrize("with_layer", [False, True])
def test_mix_labels_around_the_step_adds_no_graph(with_layer):
    # Labels stored on the layer (an nn.Module attribute) had static shapes under dynamo, so
    # every batch size compiled a graph of its own: 4 graphs against 2 without the layer.
    def count(layer: bool) -> int:
        torch._dynamo.reset()
        net = OneConv()
        if layer:
            insert_feature_mix(net, "stem", FeatureMix(grid=(4, 2)))
        counter = CompileCounter()
        compiled = torch.compile(net, backend=counter)
        for n in BATCH_SIZES:
            images = torch.randn(n, 3, 8, 4)
            if layer:
                with mix_labels(net, torch.arange(n) % 3):
                    compiled(images).sum().backward()
                assert net.mix_after_stem.last_info.mask.shape[0] == n
            else:
                compiled(images).sum().backward()
        return counter.frame_count

    assert count(with_layer) == 2
