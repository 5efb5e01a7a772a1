"""pmm_kernels.soft_cross_entropy / SoftCrossEntropy: F.cross_entropy with checked inputs, for
integer labels and the soft targets of the label-mixing modes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import pmm_kernels
from pmm_kernels import MixInfo, SoftCrossEntropy, mixed_targets, soft_cross_entropy


def make_logits(n=6, c=5, seed=0, dtype=torch.float32):
    return torch.randn(n, c, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def soft_targets(n=6, c=5, seed=1, dtype=torch.float32):
    return torch.rand(n, c, generator=torch.Generator().manual_seed(seed), dtype=dtype).softmax(1)


def hand_formula(logits, targets, eps):
    """-sum_c t'_c log softmax(z)_c with t' = t (1 - eps) + eps / C, per sample, in float64."""
    z = logits.double()
    c = z.shape[1]
    t = F.one_hot(targets, c).double() if not targets.is_floating_point() else targets.double()
    t = t * (1 - eps) + eps / c
    log_p = z - torch.logsumexp(z, dim=1, keepdim=True)
    return -(t * log_p).sum(dim=1)


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kind", ["labels", "probabilities"])
def test_equals_torch_cross_entropy_and_its_gradient(eps, reduction, kind):
    logits = make_logits().requires_grad_()
    targets = torch.tensor([0, 4, 2, 2, 1, 3]) if kind == "labels" else soft_targets()
    ours = soft_cross_entropy(logits, targets, label_smoothing=eps, reduction=reduction)
    (ours_grad,) = torch.autograd.grad(ours.sum(), logits)
    theirs = F.cross_entropy(logits, targets, label_smoothing=eps, reduction=reduction)
    (theirs_grad,) = torch.autograd.grad(theirs.sum(), logits)
    assert torch.equal(ours, theirs) and torch.equal(ours_grad, theirs_grad)
    module = SoftCrossEntropy(label_smoothing=eps, reduction=reduction)
    assert torch.equal(module(logits, targets), ours)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("kind", ["labels", "probabilities"])
def test_matches_the_hand_formula_in_float64(eps, kind):
    logits = make_logits(seed=2, dtype=torch.float64)
    targets = torch.tensor([1, 0, 4, 4, 3, 2]) if kind == "labels" else soft_targets(seed=3)
    expected = hand_formula(logits, targets, eps)
    got = soft_cross_entropy(
        logits,
        targets.double() if kind != "labels" else targets,
        label_smoothing=eps,
        reduction="none",
    )
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        soft_cross_entropy(logits, targets, label_smoothing=eps),
        expected.mean(),
        rtol=1e-6,
        atol=1e-6,
    )


def test_one_hot_probabilities_equal_their_labels():
    logits, labels = make_logits(seed=4), torch.tensor([3, 1, 0, 2, 4, 4])
    for eps in (0.0, 0.1):
        torch.testing.assert_close(
            soft_cross_entropy(logits, F.one_hot(labels, 5).float(), label_smoothing=eps),
            soft_cross_entropy(logits, labels, label_smoothing=eps),
        )


def test_trains_against_the_targets_of_a_label_mixing_mode():
    labels = torch.tensor([0, 0, 1, 2])
    feat = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    _, info = pmm_kernels.feature_mix(
        feat,
        labels,
        mode="cutmix",
        block_size=(2, 2),
        num_blocks=2,
        partners=torch.tensor([2, 3, 0, -1]),
    )
    logits = make_logits(n=4, c=3, seed=6)
    targets = mixed_targets(labels, info, 3)
    assert (targets.max(dim=1).values < 1).sum() == 3  # really soft
    torch.testing.assert_close(
        soft_cross_entropy(logits, targets, label_smoothing=0.1),
        hand_formula(logits, targets, 0.1).mean().float(),
    )
    # Smoothing in mixed_targets or in the loss: the same loss.
    torch.testing.assert_close(
        soft_cross_entropy(logits, mixed_targets(labels, info, 3, smoothing=0.1)),
        soft_cross_entropy(logits, targets, label_smoothing=0.1),
    )


def test_half_precision_logits_under_autocast():
    logits, labels = make_logits(n=8, c=7, seed=7), torch.arange(8) % 7
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = soft_cross_entropy(logits.bfloat16(), labels, label_smoothing=0.1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(
        got, F.cross_entropy(logits.bfloat16().float(), labels, label_smoothing=0.1)
    )


BAD = [
    # (logits, targets, keywords, error, words the message must contain)
    (make_logits(), [0, 1, 2, 3, 4, 0], {}, TypeError, "targets must be a torch.Tensor"),
    (make_logits()[0], torch.tensor([0]), {}, ValueError, r"logits must be a floating \(N, C\)"),
    (make_logits().long(), torch.arange(6) % 5, {}, ValueError, "logits must be a floating"),
    (make_logits(), torch.tensor([0, 1, 2]), {}, ValueError, r"targets must have shape \(N,\)"),
    (
        make_logits(),
        torch.tensor([0, 1, 2, 3, 4, 5]),
        {},
        ValueError,
        r"targets must lie in \[0, C\) = \[0, 5\), got values in \[0, 5\]",
    ),
    (
        make_logits(),
        torch.tensor([0, 1, -1, 3, 4, 0]),
        {},
        ValueError,
        r"targets must lie in \[0, C\) = \[0, 5\), got values in \[-1, 4\]",
    ),
    (make_logits(), soft_targets()[:, :4], {}, ValueError, r"\(N, C\) = \(6, 5\) probabilities"),
    (make_logits(), soft_targets() * 2, {}, ValueError, "row sums of targets must lie in 1"),
    (
        make_logits(),
        soft_targets().index_copy(0, torch.tensor([0]), torch.tensor([[1.5, -0.5, 0, 0, 0]])),
        {},
        ValueError,
        r"targets must lie in \[0, 1\]",
    ),
    (
        make_logits(),
        soft_targets().index_fill(0, torch.tensor([2]), float("nan")),
        {},
        ValueError,
        "targets must lie in .* got NaN",
    ),
    (
        make_logits(),
        torch.arange(6) % 5,
        {"label_smoothing": 1.0},
        ValueError,
        r"label_smoothing must be a number in \[0, 1\)",
    ),
    (
        make_logits(),
        torch.arange(6) % 5,
        {"reduction": "avg"},
        ValueError,
        r"reduction must be one of \('mean', 'sum', 'none'\)",
    ),
    (make_logits(), (torch.arange(6) % 5).bool(), {}, TypeError, "targets must be an integer"),
]


@pytest.mark.parametrize(("logits", "targets", "keywords", "error", "message"), BAD)
def test_bad_input_is_named_in_the_error(logits, targets, keywords, error, message):
    with pytest.raises(error, match=message):
        soft_cross_entropy(logits, targets, **keywords)


def test_module_checks_its_arguments_when_built():
    with pytest.raises(ValueError, match=r"label_smoothing must be a number in \[0, 1\)"):
        SoftCrossEntropy(label_smoothing=-0.1)
    with pytest.raises(ValueError, match="reduction must be one of"):
        SoftCrossEntropy(reduction="batchmean")
    assert "label_smoothing=0.1" in repr(SoftCrossEntropy(0.1))


def test_mixed_targets_docstring_pairs_with_the_loss():
    # A hand-built MixInfo (no label_lam) still works end to end.
    info = MixInfo(
        torch.tensor([1, -1]),
        torch.zeros(2, 1, dtype=torch.long),
        torch.zeros(2, 1, 1, dtype=torch.bool),
        torch.tensor([0.25, 0.0]),
    )
    targets = mixed_targets(torch.tensor([0, 2]), info, 3)
    assert torch.isfinite(soft_cross_entropy(make_logits(n=2, c=3), targets))
