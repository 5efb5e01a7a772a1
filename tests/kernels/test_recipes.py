"""Stand-ins for the torchreid and fast-reid engines, calling the model exactly as those engines
do (torchreid's Engine.forward_backward and open_specified_layers, fast-reid's
SimpleTrainer.run_step and Baseline.forward): fast unit tests of the layer's calling conventions.
The recipes themselves run as written in the real libraries in tests/clients/."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pmm_kernels
from pmm_kernels.integrations import TorchreidMixLabels

NUM_IDS = 4


class BlockwiseResNet(nn.Module):
    """A ResNet trunk that runs each stage block by block, as fast-reid's ResNet does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.layer3 = nn.Sequential(
            *(nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU()) for _ in range(3))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for i in range(len(self.layer3)):
            x = self.layer3[i](x)
        return x


class ReidNet(nn.Module):
    """torchreid's ResNet in small: ``model(imgs)`` gives logits in training, features in eval."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.layer3 = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU())
        self.classifier = nn.Linear(8, NUM_IDS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.layer3(self.conv1(x)).mean(dim=(2, 3))
        return self.classifier(v) if self.training else v


class CrossEntropyLoss(nn.Module):
    """torchreid.losses.CrossEntropyLoss: label smoothing by ``eps``, integer targets only."""

    def __init__(self, num_classes: int, eps: float = 0.1) -> None:
        super().__init__()
        self.num_classes, self.eps = num_classes, eps

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        one_hot = F.one_hot(targets, self.num_classes).float()
        smoothed = (1 - self.eps) * one_hot + self.eps / self.num_classes
        return (-smoothed * F.log_softmax(inputs, dim=1)).mean(0).sum()


class TorchreidEngine:
    """torchreid.engine.ImageSoftmaxEngine's training path in small."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        self.criterion = CrossEntropyLoss(NUM_IDS)
        self.losses: list[float] = []

    def parse_data_for_train(self, data):
        return data["img"], data["pid"]

    def forward_backward(self, data):
        imgs, pids = self.parse_data_for_train(data)
        outputs = self.model(imgs)
        loss = self.compute_loss(self.criterion, outputs, pids)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}

    def compute_loss(self, criterion, outputs, targets):
        if isinstance(outputs, (tuple, list)):  # torchreid's DeepSupervision
            return sum(criterion(x, targets) for x in outputs) / len(outputs)
        return criterion(outputs, targets)

    def train(self, loader, open_layers=None):
        self.model.train()
        if open_layers is not None:  # torchreid's open_specified_layers (fixbase epochs)
            for name, module in self.model.named_children():
                module.train(name in open_layers)
        for data in loader:
            self.losses.append(self.forward_backward(data)["loss"])


def batches(steps: int = 2, n: int = 8):
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        yield {
            "img": torch.randn(n, 3, 16, 8, generator=generator),
            "pid": torch.arange(n) % NUM_IDS,
            "camid": torch.zeros(n, dtype=torch.long),
        }


def check_mixed(layer: pmm_kernels.FeatureMix, labels: torch.Tensor) -> None:
    info = layer.last_info
    assert info is not None and info.mask.any()
    partners = info.partners
    assert (labels[partners] != labels).all()  # a_hard_mix: partners of another identity


def test_torchreid_recipe():
    torch.manual_seed(0)
    model = ReidNet()
    # The torchreid calling convention, as in docs/recipes.md.
    pmm_kernels.insert_feature_mix(
        model, "layer3", pmm_kernels.FeatureMix(classifier=model.classifier)
    )

    class Engine(TorchreidMixLabels, TorchreidEngine):
        pass

    engine = Engine(model)
    engine.train(batches())
    assert len(engine.losses) == 2 and all(torch.isfinite(torch.tensor(engine.losses)))
    check_mixed(model.mix_after_layer3, torch.arange(8) % NUM_IDS)
    assert model.mix_after_layer3.labels is None  # only during the step
    # Fixbase epochs: open_specified_layers switches the layer off like any child, and says so.
    with pytest.warns(UserWarning, match="'mix_after_layer3' is in eval mode, so it does not mix"):
        engine.train(batches(1), open_layers=["classifier"])
    engine.train(batches(1), open_layers=["classifier", "mix_after_layer3"])
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 16, 8)).shape == (2, 8)


def test_torchreid_recipe_scores_cutmix_against_mixed_targets():
    torch.manual_seed(0)
    model = ReidNet()
    pmm_kernels.insert_feature_mix(model, "layer3", pmm_kernels.FeatureMix("cutmix"))

    class Engine(TorchreidMixLabels, TorchreidEngine):
        pass

    engine = Engine(model)
    engine.train(batches(1))
    assert torch.isfinite(torch.tensor(engine.losses)).all()
    pids, info = torch.arange(8) % NUM_IDS, model.mix_after_layer3.last_info
    soft = pmm_kernels.mixed_targets(pids, info, NUM_IDS, smoothing=0.1)  # torchreid's eps
    assert not torch.equal(soft, pmm_kernels.mixed_targets(pids, None, NUM_IDS, smoothing=0.1))
    outputs = torch.randn(8, NUM_IDS)
    expected = F.cross_entropy(outputs, soft)
    torch.testing.assert_close(engine.compute_loss(engine.criterion, outputs, pids), expected)
    both = engine.compute_loss(engine.criterion, (outputs, outputs), pids)  # DeepSupervision
    torch.testing.assert_close(both, expected)
    # Other criteria (the triplet loss: no num_classes/eps) keep the integer labels.
    seen = []
    engine.compute_loss(lambda features, targets: seen.append(targets) or 0.0, outputs, pids)
    assert seen[0] is pids


def test_torchreid_without_the_subclass_says_what_is_missing():
    model = ReidNet()
    pmm_kernels.insert_feature_mix(model, "layer3", pmm_kernels.FeatureMix())
    with pytest.raises(ValueError, match="needs labels: run the model inside `with pmm_kernels"):
        TorchreidEngine(model).train(batches(1))


class Baseline(nn.Module):
    """fastreid.modeling.meta_arch.Baseline in small: called with the batch dict, it returns the
    loss dict in training and the features in eval."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = BlockwiseResNet()
        self.heads = nn.Linear(8, NUM_IDS)

    def forward(self, batched_inputs):
        features = self.backbone(batched_inputs["images"])
        if self.training:
            targets = batched_inputs["targets"]
            logits = self.heads(features.mean(dim=(2, 3)))
            return {"loss_cls": F.cross_entropy(logits, targets)}
        return features.mean(dim=(2, 3))


def run_step(model, optimizer, data):
    """fastreid.engine.train_loop.SimpleTrainer.run_step."""
    loss_dict = model(data)
    losses = sum(loss_dict.values())
    optimizer.zero_grad()
    losses.backward()
    optimizer.step()
    return losses.item()


def fastreid_batches(steps: int = 2, n: int = 8):
    for data in batches(steps, n):
        yield {"images": data["img"], "targets": data["pid"], "camids": data["camid"]}


def test_fastreid_recipe():
    torch.manual_seed(0)
    model = Baseline().train()
    # The fast-reid calling convention, as in docs/recipes.md: its ResNet runs layer3 block by
    # block, so the layer goes after the last block.
    pmm_kernels.insert_feature_mix(model, "backbone.layer3.2", pmm_kernels.FeatureMix())
    pmm_kernels.labels_from_batch(model, key="targets")

    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    losses = [run_step(model, optimizer, data) for data in fastreid_batches()]
    assert all(torch.isfinite(torch.tensor(losses)))
    check_mixed(model.backbone.mix_after_layer3_2, torch.arange(8) % NUM_IDS)
    model.eval()
    with torch.no_grad():
        assert model({"images": torch.randn(2, 3, 16, 8)}).shape == (2, 8)


def test_fastreid_with_the_stage_instead_of_its_last_block_fails_loudly():
    model = Baseline().train()
    pmm_kernels.insert_feature_mix(model, "backbone.layer3", pmm_kernels.FeatureMix())
    pmm_kernels.labels_from_batch(model, key="targets")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(
        ValueError, match=r"Insert after the last of them: after='backbone.layer3.2'"
    ):
        run_step(model, optimizer, next(fastreid_batches()))
