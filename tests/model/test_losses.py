"""Tests of pmm_model.nets.losses against hand-computed values."""

import math

import pytest
import torch
import torch.nn.functional as F

from pmm_model.nets.losses import PMMLoss, batch_hard_triplet_loss
from pmm_model.nets.models import ReIDOutput

# 1-d embeddings: id 0 at {0, 1}, id 1 at {3, 7}.
FEATURES = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
LABELS = torch.tensor([0, 0, 1, 1])
# anchor: (hardest positive, nearest negative) = (1, 3), (1, 2), (4, 2), (4, 6)
D_AP = torch.tensor([1.0, 1.0, 4.0, 4.0])
D_AN = torch.tensor([3.0, 2.0, 2.0, 6.0])


def test_soft_margin_is_the_default():
    expected = torch.log1p(torch.exp(D_AP - D_AN)).mean()
    torch.testing.assert_close(batch_hard_triplet_loss(FEATURES, LABELS), expected)


def test_hinge_margin():
    expected = (D_AP - D_AN + 0.5).clamp(min=0).mean()
    torch.testing.assert_close(batch_hard_triplet_loss(FEATURES, LABELS, margin=0.5), expected)


def test_gradients_stay_finite_for_identical_embeddings():
    feats = torch.ones(4, 3, requires_grad=True)
    loss = batch_hard_triplet_loss(feats, LABELS)
    loss.backward()
    assert math.isclose(loss.item(), math.log(2), rel_tol=1e-5)
    assert torch.isfinite(feats.grad).all()


def test_no_negative_in_batch_gives_zero_with_a_graph():
    feats = torch.randn(3, 4, requires_grad=True)
    loss = batch_hard_triplet_loss(feats, torch.zeros(3, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"features must be \(N, D\).*\(4, 2, 1\)"):
        batch_hard_triplet_loss(torch.zeros(4, 2, 1), LABELS)


def test_pmm_loss_sums_six_equal_terms():
    generator = torch.Generator().manual_seed(0)
    logits = [torch.randn(4, 3, generator=generator) for _ in range(3)]
    feats = [torch.randn(4, 5, generator=generator) for _ in range(3)]
    total, parts = PMMLoss()(ReIDOutput(features=feats, logits=logits), LABELS)
    assert list(parts) == ["triplet1", "ce1", "triplet2", "ce2", "triplet3", "ce3"]
    torch.testing.assert_close(total, sum(parts.values()))
    # Label smoothing 0.1 spreads 0.1 uniformly over the 3 classes.
    target = torch.full((4, 3), 0.1 / 3).scatter(1, LABELS[:, None], 0.9 + 0.1 / 3)
    expected_ce = -(target * F.log_softmax(logits[1], 1)).sum(1).mean()
    torch.testing.assert_close(parts["ce2"], expected_ce)
    torch.testing.assert_close(parts["triplet3"], batch_hard_triplet_loss(feats[2], LABELS))


def test_triplet_distances_stay_float32_under_autocast():
    # 512-d ReLU features: in bf16 the |a|^2 + |b|^2 - 2ab form loses the small positive distances.
    features = torch.relu(torch.randn(16, 512, generator=torch.Generator().manual_seed(0)))
    labels = torch.arange(4).repeat_interleave(4)
    expected = batch_hard_triplet_loss(features, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(batch_hard_triplet_loss(features, labels), expected)


def test_a_label_mixing_stage_scores_its_targets_smoothed():
    import pmm_kernels

    logits = [torch.randn(4, 3) for _ in range(2)]
    info = pmm_kernels.MixInfo(
        torch.tensor([2, 3, 0, -1]),
        torch.zeros(4, 1, dtype=torch.long),
        torch.zeros(4, 2, 2, dtype=torch.bool),
        torch.tensor([0.25, 0.5, 0.25, 0.0]),
    )
    mixed = pmm_kernels.mixed_targets(LABELS, info, 3)
    out = ReIDOutput(features=[FEATURES] * 2, logits=logits, targets=[None, mixed])
    _, parts = PMMLoss(label_smoothing=0.1)(out, LABELS)
    targets = pmm_kernels.mixed_targets(LABELS, info, 3, 0.1)
    expected = -(targets * F.log_softmax(logits[1], dim=1)).sum(1).mean()
    torch.testing.assert_close(parts["ce2"], expected)
    torch.testing.assert_close(
        parts["ce1"], F.cross_entropy(logits[0], LABELS, label_smoothing=0.1)
    )
