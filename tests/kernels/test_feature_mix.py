"""The feature-mix family (docs/op.md#feature-mix-family) on the PyTorch path, against loops."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import LAYOUTS, SEEDS, assert_matches_oracle, make_feat, mix_problems
from oracles.a_hard_mix import oracle_backward
from oracles.feature_mix import ATTENTIVE, RULES, oracle_mix, oracle_targets

from pmm_kernels import MODES, MixInfo, a_hard_mix, feature_mix, mixed_targets

PARTNER_MODES = [m for m in MODES if MODES[m].partner_rule != "none"]


def make_attn(mode, shape, form, seed):
    if mode not in ATTENTIVE:
        return None
    n, c, h, w = shape
    generator = torch.Generator().manual_seed(seed + 100)
    return torch.randn((n, c) if form == "weights" else (n, h, w), generator=generator)


def check_mode(feat, labels, attn, *, mode, seed=0, partners=None, **options):
    """Run the op and the oracle; assert out, info and grad agree exactly."""
    feat = feat.detach().requires_grad_()
    out, info = feature_mix(
        feat,
        labels,
        attn,
        mode=mode,
        partners=partners,
        generator=torch.Generator().manual_seed(seed),
        backend="torch",
        **options,
    )
    expected = oracle_mix(feat, labels, attn, mode=mode, seed=seed, partners=partners, **options)
    assert_matches_oracle(feat, out, info, expected)

    grad_out = torch.randn(feat.shape, generator=torch.Generator().manual_seed(seed + 1))
    grad_out = grad_out.to(feat.dtype)
    (grad,) = torch.autograd.grad(out, feat, grad_out.to(feat.device))
    assert torch.equal(grad.cpu(), oracle_backward(grad_out, expected.partners, expected.mask))
    return out, info


SHAPES = [
    # (N, C, H, W), block size, k values (k at its limits and between)
    ((1, 3, 24, 8), (3, 2), [1, 3, 32]),
    ((2, 5, 7, 5), (3, 2), [1, 9]),
    ((7, 130, 24, 8), (3, 2), [3]),
    ((3, 1, 1, 1), (1, 1), [1]),
    ((4, 6, 5, 9), (2, 4), [1, 9]),
    ((5, 4, 6, 4), (1, 1), [1, 24]),
]


@pytest.mark.parametrize("mode", [m for m in MODES if m != "batch_drop"])
@pytest.mark.parametrize(("shape", "block_size", "ks"), SHAPES)
def test_block_modes_match_their_oracle(mode, shape, block_size, ks):
    n = shape[0]
    for seed, k in enumerate(ks):
        labels = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(seed))
        form = "weights" if seed % 2 == 0 else "map"
        check_mode(
            make_feat(shape, seed=seed),
            labels,
            make_attn(mode, shape, form, seed),
            mode=mode,
            seed=seed,
            block_size=block_size,
            num_blocks=k,
        )


@pytest.mark.parametrize(
    ("shape", "ratios"),
    [
        ((1, 3, 24, 8), (0.33, 1.0)),
        ((4, 5, 7, 5), (0.5, 0.5)),
        ((3, 2, 1, 1), (0.33, 1.0)),
        ((6, 3, 9, 4), (0.01, 0.01)),
        ((2, 4, 5, 3), (1.0, 1.0)),
    ],
)
def test_batch_drop_matches_its_oracle(shape, ratios):
    for seed in range(3):
        _, info = check_mode(
            make_feat(shape, seed=seed),
            None,
            None,
            mode="batch_drop",
            seed=seed,
            h_ratio=ratios[0],
            w_ratio=ratios[1],
        )
        assert (info.mask == info.mask[0]).all()  # one rectangle for the whole batch


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_every_mode_dtype_and_layout(mode, layout, dtype, device):
    shape = (6, 10, 11, 7)
    feat = make_feat(shape, dtype=dtype, layout=layout, seed=3, device=device)
    labels = torch.tensor([0, 0, 1, 1, 2, 2], device=device)
    attn = make_attn(mode, shape, "weights", 3)
    out, _ = check_mode(
        feat,
        labels,
        None if attn is None else attn.to(device),
        mode=mode,
        seed=4,
        block_size=(3, 2),
        num_blocks=4,
    )
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("mode", PARTNER_MODES)
def test_given_partners_with_repeats_and_gaps(mode):
    # Sample 0 is the partner of five samples: the backward sums five takers in a fixed order.
    shape = (8, 4, 6, 4)
    partners = torch.tensor([1, 0, 0, 0, 0, 0, -1, 6])
    check_mode(
        make_feat(shape, seed=5) * 1e3,
        torch.arange(8),
        make_attn(mode, shape, "map", 5),
        mode=mode,
        block_size=(2, 2),
        num_blocks=3,
        partners=partners,
    )


def test_single_sample_batches():
    feat = make_feat((1, 3, 6, 4), seed=6)
    for mode in MODES:
        out, info = feature_mix(
            feat,
            torch.tensor([2]),
            make_attn(mode, (1, 3, 6, 4), "map", 6),
            mode=mode,
            block_size=(2, 2),
            num_blocks=2,
        )
        assert info.partners.tolist() == [-1]  # nobody to take from
        if MODES[mode].partner_rule == "none":
            assert info.mask.any() and (out[:, :, info.mask[0]] == 0).all()
        else:
            assert not info.mask.any() and torch.equal(out, feat)


def test_a_hard_mix_is_the_a_hard_mix_mode():
    feat, attn, labels = make_feat((6, 5, 8, 4), seed=7), torch.rand(6, 5), torch.arange(6) % 3
    out, info = a_hard_mix(
        feat, attn, labels, block_size=(2, 2), generator=torch.Generator(), return_info=True
    )
    out2, info2 = feature_mix(feat, labels, attn, block_size=(2, 2), generator=torch.Generator())
    assert torch.equal(out, out2)
    assert all(torch.equal(a, b) for a, b in zip(info, info2, strict=True))


def test_the_names_never_released_are_gone():
    # partners= and MixInfo.partners replaced negatives= and MixInfo.negatives before any release.
    feat = make_feat((4, 3, 6, 4))
    with pytest.raises(TypeError, match="negatives"):
        feature_mix(feat, None, mode="cutmix", block_size=(2, 2), negatives=torch.arange(4))
    _, info = feature_mix(feat, None, mode="cutmix", block_size=(2, 2))
    assert not hasattr(info, "negatives")


@settings(max_examples=30, deadline=None)
@given(
    mode=st.sampled_from(list(MODES)),
    problem=mix_problems(max_n=7, max_c=5, max_side=8),
    seed=SEEDS,
)
def test_random_shapes_match_the_oracle(mode, problem, seed):
    (n, c, h, w), (bh, bw), k = problem
    labels = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(seed))
    check_mode(
        make_feat((n, c, h, w), seed=seed),
        labels,
        make_attn(mode, (n, c, h, w), "weights", seed),
        mode=mode,
        seed=seed,
        block_size=(bh, bw),
        num_blocks=k,
    )


@pytest.mark.parametrize("mode", list(MODES))
def test_gradcheck_in_float64(mode):
    shape = (5, 3, 5, 4)
    feat = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    attn = make_attn(mode, shape, "map", 0)
    attn = None if attn is None else attn.double()
    partners = torch.tensor([1, 0, 0, 2, 0]) if RULES[mode] != "none" else None

    def mix(x):
        return feature_mix(
            x,
            torch.tensor([0, 1, 1, 0, 2]),
            attn,
            mode=mode,
            block_size=(2, 2),
            num_blocks=2,
            partners=partners,
            generator=torch.Generator().manual_seed(0),
        )[0]

    assert torch.autograd.gradcheck(mix, (feat,))


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mixed_targets_follow_the_spec(mode, smoothing):
    labels = torch.tensor([0, 0, 1, 2, 2, 3])
    feat = make_feat((6, 3, 6, 4), seed=8)
    _, info = feature_mix(
        feat,
        labels,
        make_attn(mode, (6, 3, 6, 4), "map", 8),
        mode=mode,
        block_size=(2, 2),
        num_blocks=2,
    )
    mixes = MODES[mode].mixes_labels
    # The info of every mode: the label-keeping ones (and unpaired samples) get one-hot targets.
    targets = mixed_targets(labels, info, 5, smoothing)
    expected = oracle_targets(labels, info.partners.tolist(), info.lam, 5, smoothing, mixes)
    assert targets.dtype == torch.float32
    torch.testing.assert_close(targets.double(), expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(targets.sum(1), torch.ones(6))
    if mixes:  # not trivially one-hot (a partner may share the label under "any other")
        assert (targets.max(dim=1).values < 1 - smoothing).sum() >= 4


@pytest.mark.parametrize("mode", list(MODES))
def test_mix_info_says_how_much_of_the_partners_label_the_loss_sees(mode):
    labels = torch.tensor([0, 0, 1, 1])
    _, info = feature_mix(
        make_feat((4, 3, 6, 4), seed=9),
        labels,
        make_attn(mode, (4, 3, 6, 4), "weights", 9),
        mode=mode,
        block_size=(2, 2),
        partners=torch.tensor([2, -1, 0, 1]) if RULES[mode] != "none" else None,
    )
    assert info.label_lam.dtype == torch.float32
    if MODES[mode].mixes_labels:
        assert info.label_lam.tolist() == [info.lam[0].item(), 0.0, *info.lam[2:].tolist()]
        assert (info.label_lam[[0, 2, 3]] > 0).all()
    else:  # a_hard_mix and hard_mix mix features across identities but keep the labels
        assert torch.equal(info.label_lam, torch.zeros(4))
        assert torch.equal(mixed_targets(labels, info, 2), torch.eye(2)[labels])


def test_mixed_targets_ignore_unmixed_samples():
    info = MixInfo(
        torch.tensor([-1, 0]),
        torch.zeros(2, 1, dtype=torch.long),
        torch.zeros(2, 1, 1, dtype=torch.bool),
        torch.tensor([0.5, 0.5]),
    )
    targets = mixed_targets(torch.tensor([1, 0]), info, 2)  # built without label_lam: lam
    assert targets.tolist() == [[0.0, 1.0], [0.5, 0.5]]
    targets = mixed_targets(torch.tensor([1, 0]), info._replace(label_lam=torch.zeros(2)), 2)
    assert targets.tolist() == [[0.0, 1.0], [1.0, 0.0]]


GOOD = {"feat": torch.randn(4, 3, 6, 4), "labels": torch.tensor([0, 0, 1, 1])}

BAD_INPUTS = [
    # (changes to a good call, error type, words the message must contain)
    ({"mode": "mixup"}, ValueError, r"mode must be one of \('a_hard_mix', 'hard_mix'"),
    ({"mode": "a_cutmix"}, ValueError, "mode='a_cutmix' ranks blocks by saliency: pass attn"),
    ({"mode": "cutmix", "attn": torch.rand(4, 3)}, ValueError, "takes no attn"),
    ({"mode": "hard_mix", "labels": None}, ValueError, "hard_mix' draws partners of a different"),
    (
        {"mode": "cutout", "partners": torch.tensor([1, 0, 3, 2])},
        ValueError,
        "zeroes its cells and takes no partners",
    ),
    ({"mode": "batch_drop", "h_ratio": 0.0}, ValueError, r"h_ratio must be a number in \(0, 1\]"),
    ({"mode": "batch_drop", "w_ratio": 1.5}, ValueError, r"w_ratio must be a number in \(0, 1\]"),
    ({"mode": "cutmix", "num_blocks": 5}, ValueError, r"num_blocks must be in \[1, 4\]"),
    ({"mode": "cutmix", "block_size": 2}, ValueError, "block_size must be two positive ints"),
    (
        {"mode": "cutmix", "partners": torch.tensor([0, 1, 2, 4])},
        ValueError,
        r"partners must lie in \[-1, 4\)",
    ),
    ({"mode": "cutmix", "labels": torch.tensor([0, 1])}, ValueError, r"labels must have shape"),
]


@pytest.mark.parametrize(("changes", "error", "message"), BAD_INPUTS)
def test_bad_input_is_named_in_the_error(changes, error, message):
    kwargs = {**GOOD, "block_size": (3, 2), "num_blocks": 1, **changes}
    feat, labels, attn = kwargs.pop("feat"), kwargs.pop("labels"), kwargs.pop("attn", None)
    with pytest.raises(error, match=message):
        feature_mix(feat, labels, attn, **kwargs)


def test_mixed_targets_check_their_arguments():
    info = MixInfo(
        torch.tensor([1, 0]),
        torch.zeros(2, 1, dtype=torch.long),
        torch.zeros(2, 1, 1, dtype=torch.bool),
        torch.tensor([0.5, 0.5]),
    )
    with pytest.raises(ValueError, match=r"smoothing must be a number in \[0, 1\)"):
        mixed_targets(torch.tensor([0, 1]), info, 2, smoothing=1.0)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        mixed_targets(torch.tensor([0, 1]), info, 0)
    with pytest.raises(ValueError, match=r"info is for a batch of \(2,\)"):
        mixed_targets(torch.tensor([0, 1, 1]), info, 2)
    with pytest.raises(TypeError, match="info must be a MixInfo"):
        mixed_targets(torch.tensor([0, 1]), tuple(info), 2)
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        mixed_targets(torch.tensor([0.0, 1.0]), info, 2)


MIX_INFO = MixInfo(
    torch.tensor([1, 0, -1]),
    torch.zeros(3, 1, dtype=torch.long),
    torch.zeros(3, 1, 1, dtype=torch.bool),
    torch.tensor([0.5, 0.25, 0.0]),
    torch.tensor([0.5, 0.25, 0.0]),
)

BAD_TARGET_INPUTS = [
    # (labels, changes to MIX_INFO, error, words the message must contain)
    ([0, 1, 3], {}, r"labels must lie in \[0, num_classes\) = \[0, 3\), got values in \[0, 3\]"),
    ([0, -1, 2], {}, r"labels must lie in \[0, num_classes\) = \[0, 3\), got values in \[-1, 2\]"),
    (
        [0, 1, 2],
        {"partners": torch.tensor([1, 3, -1])},
        r"info.partners must lie in \[-1, 3\) for a batch of 3, got values in \[-1, 3\]",
    ),
    ([0, 1, 2], {"partners": torch.tensor([1, -2, 0])}, r"info.partners must lie in \[-1, 3\)"),
    ([0, 1, 2], {"lam": torch.tensor([0.5, float("nan"), 0.0])}, r"info.lam must lie .* got NaN"),
    ([0, 1, 2], {"lam": torch.tensor([0.5, 1.5, 0.0])}, r"info.lam must lie in \[0, 1\]"),
    ([0, 1, 2], {"label_lam": torch.tensor([-0.5, 0, 0])}, r"info.label_lam must lie in \[0, 1\]"),
    ([0, 1, 2], {"label_lam": torch.full((3,), float("nan"))}, r"info.label_lam .* got NaN"),
    ([0, 1, 2], {"label_lam": torch.zeros(2)}, r"info.label_lam must be a floating \(N,\)"),
]


@pytest.mark.parametrize(("labels", "changes", "message"), BAD_TARGET_INPUTS)
def test_mixed_targets_name_out_of_range_values(labels, changes, message):
    # Before: F.one_hot's RuntimeError, an IndexError, or NaN targets without a word.
    with pytest.raises(ValueError, match=message):
        mixed_targets(torch.tensor(labels), MIX_INFO._replace(**changes), 3)
    if not changes:  # the labels alone are checked without an info too
        with pytest.raises(ValueError, match=message):
            mixed_targets(torch.tensor(labels), None, 3)
