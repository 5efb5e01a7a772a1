"""The a_hard_mix contract (docs/op.md#a_hard_mix) on the PyTorch path, against a loop oracle."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import LAYOUTS, SEEDS, check_against_oracle, make_feat, mix_problems
from oracles.a_hard_mix import oracle_partners

import pmm_kernels
from pmm_kernels import AHardMix, MixInfo, a_hard_mix
from pmm_kernels.testing.authors_ops import authors_a_hard_mix

SHAPES = [
    # (N, C, H, W), block size, k values (k at its limits and between)
    ((1, 3, 24, 8), (3, 2), [1, 3, 32]),
    ((2, 5, 7, 5), (3, 2), [1, 2, 9]),
    ((7, 130, 24, 8), (3, 2), [3]),
    ((3, 1, 1, 1), (1, 1), [1]),
    ((4, 6, 5, 9), (2, 4), [1, 9]),
    ((4, 3, 7, 5), (7, 5), [1]),
    ((5, 4, 6, 4), (1, 1), [1, 24]),
]


@pytest.mark.parametrize(("shape", "block_size", "ks"), SHAPES)
@pytest.mark.parametrize("attn_form", ["weights", "map"])
def test_matches_oracle_on_awkward_shapes(shape, block_size, ks, attn_form):
    n, c, h, w = shape
    labels = torch.randint(0, 3, (n,))
    for k in ks:
        feat = make_feat(shape)
        attn = torch.randn(n, c) if attn_form == "weights" else torch.randn(n, h, w)
        check_against_oracle(feat, attn, labels, block_size=block_size, num_blocks=k)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_matches_oracle_for_every_dtype_and_layout(dtype, layout, device):
    feat = make_feat((6, 10, 11, 7), dtype=dtype, layout=layout, device=device)
    labels = torch.tensor([0, 0, 1, 1, 2, 2], device=device)
    attn = torch.rand(6, 10, device=device)
    out, _ = check_against_oracle(feat, attn, labels, block_size=(3, 2), num_blocks=4)
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)


def test_given_partners_with_repeated_and_missing_partners():
    # Sample 0 is the partner of five samples: the backward sums five takers in a fixed order.
    feat = make_feat((8, 4, 6, 4)) * 1e3
    partners = torch.tensor([1, 0, 0, 0, 0, 0, -1, 6])
    check_against_oracle(
        feat,
        torch.rand(8, 6, 4),
        torch.arange(8),
        block_size=(2, 2),
        num_blocks=3,
        partners=partners,
    )


def test_saliency_is_relu_of_weighted_channel_sum():
    feat = make_feat((3, 5, 4, 2), layout="strided")
    weights = torch.randn(3, 5)
    expected = torch.einsum("nc,nchw->nhw", weights.double(), feat.double()).clamp_min(0)
    result = pmm_kernels.saliency(feat, weights)
    assert result.dtype == torch.float32
    torch.testing.assert_close(result.double(), expected, rtol=1e-6, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # scores stay float32 under autocast
        assert torch.equal(pmm_kernels.saliency(feat, weights), result)


@settings(max_examples=40, deadline=None)
@given(
    problem=mix_problems(max_n=9, max_c=6, max_side=9),
    num_labels=st.integers(1, 4),
    seed=SEEDS,
)
def test_properties(problem, num_labels, seed):
    (n, c, h, w), (bh, bw), k = problem
    generator = torch.Generator().manual_seed(seed)
    feat = torch.randn(n, c, h, w, generator=generator)
    labels = torch.randint(0, num_labels, (n,), generator=generator)
    attn = torch.randn(n, c, generator=generator)

    out, info = a_hard_mix(
        feat,
        attn,
        labels,
        block_size=(bh, bw),
        num_blocks=k,
        generator=torch.Generator().manual_seed(seed),
        return_info=True,
    )
    again = a_hard_mix(
        feat,
        attn,
        labels,
        block_size=(bh, bw),
        num_blocks=k,
        generator=torch.Generator().manual_seed(seed),
    )
    assert torch.equal(out, again)  # same CPU generator, same result

    for i in range(n):
        j = int(info.partners[i])
        if j < 0:  # only when every sample shares i's label
            assert (labels == labels[i]).all()
            assert not info.mask[i].any() and info.lam[i] == 0
            assert torch.equal(out[i], feat[i])
            continue
        assert labels[j] != labels[i]
        m = info.mask[i]
        assert torch.equal(out[i][:, m], feat[j][:, m])
        assert torch.equal(out[i][:, ~m], feat[i][:, ~m])
        assert info.lam[i] == torch.tensor(float(m.sum()) / (h * w), dtype=torch.float32)
        assert len(set(info.blocks[i].tolist())) == k


def test_one_identity_batch_passes_through_with_no_partner():
    feat = make_feat((5, 3, 6, 4))
    out, info = a_hard_mix(feat, torch.rand(5, 3), torch.full((5,), 7), return_info=True)
    assert torch.equal(out, feat)
    assert info.partners.tolist() == [-1] * 5
    assert not info.mask.any()
    assert torch.equal(info.lam, torch.zeros(5))


def test_ties_go_to_the_lower_block_and_non_finite_scores_rank_last():
    saliency = torch.ones(2, 6, 4)
    saliency[1, 0:3, 0:2] = float("nan")  # block 0
    saliency[1, 3:6, 2:4] = float("inf")  # block 3
    saliency[1, 3:6, 0:2] = 0.5  # block 2: finite but lowest
    _, info = a_hard_mix(
        torch.randn(2, 3, 6, 4), saliency, torch.tensor([0, 1]), num_blocks=4, return_info=True
    )
    assert info.blocks.tolist() == [[0, 1, 2, 3], [1, 2, 0, 3]]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_attention_never_crashes(bad):
    attn = torch.full((4, 5), bad)
    out, info = a_hard_mix(
        torch.randn(4, 5, 7, 3), attn, torch.tensor([0, 1, 0, 1]), num_blocks=2, return_info=True
    )
    assert out.shape == (4, 5, 7, 3)
    assert ((info.blocks >= 0) & (info.blocks < 8)).all()
    if math.isnan(bad):  # every score is NaN: the lowest indices win
        assert info.blocks.tolist() == [[0, 1]] * 4


def test_partner_rule_follows_the_spec_formula():
    labels = torch.tensor([3, 1, 3, 2, 1, 3, 2])
    u = torch.rand(7, generator=torch.Generator().manual_seed(5))
    _, info = a_hard_mix(
        torch.randn(7, 2, 3, 2),
        torch.rand(7, 2),
        labels,
        block_size=(1, 1),
        generator=torch.Generator().manual_seed(5),
        return_info=True,
    )
    assert info.partners.tolist() == oracle_partners(u, labels)


def test_gradcheck_in_float64():
    feat = torch.randn(5, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 1, 0, 2])
    saliency_map = torch.rand(5, 5, 4, dtype=torch.float64)
    partners = torch.tensor([1, 0, 0, 2, 0])  # sample 0 is taken from three times

    def mix(x):
        return a_hard_mix(
            x, saliency_map, labels, block_size=(2, 2), num_blocks=2, partners=partners
        )

    assert torch.autograd.gradcheck(mix, (feat,))
    weights = torch.rand(5, 3, dtype=torch.float64, requires_grad=True)
    out = a_hard_mix(feat, weights, labels, partners=partners, block_size=(2, 2))
    out.sum().backward()
    assert weights.grad is None  # attn is a constant


def test_module_mixes_only_in_training():
    layer = AHardMix(block_size=(2, 2), num_blocks=2)
    feat = torch.randn(4, 3, 6, 4)
    labels = torch.tensor([0, 0, 1, 1])
    assert not torch.equal(layer(feat, torch.rand(4, 3), labels), feat)
    layer.eval()
    assert layer(feat, torch.rand(4, 3), labels) is feat
    assert "block_size=(2, 2), num_blocks=2" in repr(layer)


def test_matches_the_authors_op_on_the_paper_map():
    # Same partners, same channel weights, 24x8 map: the authors' mask arithmetic and ours agree.
    feat = torch.randn(16, 32, 24, 8)
    weights = torch.randn(16, 32)
    partners = torch.randint(0, 16, (16,))
    ours = a_hard_mix(feat, weights, torch.arange(16), partners=partners)
    theirs = authors_a_hard_mix(feat, weights, partners)
    assert torch.equal(ours, theirs)
    assert not torch.equal(ours, feat)


def test_mixinfo_is_a_named_tuple_of_tensors():
    _, info = a_hard_mix(
        torch.randn(2, 2, 6, 2),
        torch.rand(2, 2),
        torch.tensor([0, 1]),
        num_blocks=2,
        return_info=True,
    )
    assert isinstance(info, MixInfo)
    partners, blocks, mask, lam, label_lam = info
    assert partners.shape == (2,) and blocks.shape == (2, 2)
    assert mask.shape == (2, 6, 2) and lam.shape == (2,)
    assert torch.equal(label_lam, torch.zeros(2))  # a_hard_mix keeps the labels


GOOD = {
    "feat": torch.randn(4, 3, 6, 4),
    "attn": torch.rand(4, 3),
    "labels": torch.tensor([0, 0, 1, 1]),
}

BAD_INPUTS = [
    # (changes to the good call, error type, words the message must contain)
    ({"feat": [[1.0]]}, TypeError, "feat must be a torch.Tensor"),
    ({"feat": torch.randn(4, 3, 6)}, ValueError, r"feat must have shape \(N, C, H, W\)"),
    ({"feat": torch.ones(4, 3, 6, 4, dtype=torch.int32)}, TypeError, "feat must be float"),
    (
        {
            "feat": torch.randn(0, 3, 6, 4),
            "attn": torch.rand(0, 3),
            "labels": torch.zeros(0, dtype=torch.long),
        },
        ValueError,
        "feat must not be empty",
    ),
    ({"attn": torch.rand(4, 5)}, ValueError, r"attn must be a floating \(N, C\) = \(4, 3\)"),
    ({"attn": torch.rand(4, 6, 5)}, ValueError, r"attn must be floating .*got .*\(4, 6, 5\)"),
    ({"attn": torch.rand(3, 6, 4)}, ValueError, r"attn must be floating"),
    ({"attn": torch.ones(4, 3, dtype=torch.long)}, ValueError, "attn must be a floating"),
    ({"attn": "saliency"}, TypeError, "attn must be a torch.Tensor"),
    ({"labels": torch.tensor([0.0, 0, 1, 1])}, TypeError, "labels must be an integer tensor"),
    ({"labels": torch.tensor([0, 1, 1])}, ValueError, r"labels must have shape \(N,\) = \(4,\)"),
    (
        {"labels": torch.zeros(4, dtype=torch.long, device="meta")},
        ValueError,
        "labels is on meta but feat is on cpu",
    ),
    ({"block_size": (0, 2)}, ValueError, "block_size must be two positive ints"),
    ({"block_size": (3,)}, ValueError, "block_size must be two positive ints"),
    ({"block_size": (2.0, 1)}, ValueError, "block_size must be two positive ints"),
    ({"block_size": 3}, ValueError, "block_size must be two positive ints"),
    ({"num_blocks": 0}, ValueError, "num_blocks must be a positive int"),
    ({"num_blocks": 1.5}, ValueError, "num_blocks must be a positive int"),
    ({"num_blocks": 5}, ValueError, r"num_blocks must be in \[1, 4\] for a 6x4 map"),
    (
        {"partners": torch.tensor([0, 1, 2, 4])},
        ValueError,
        r"partners must lie in \[-1, 4\).*\[0, 4\]",
    ),
    ({"partners": torch.tensor([-2, 1, 2, 3])}, ValueError, r"partners must lie in \[-1, 4\)"),
    ({"partners": torch.tensor([0.0, 1, 2, 3])}, TypeError, "partners must be an integer"),
    ({"partners": torch.tensor([0, 1])}, ValueError, r"partners must have shape \(N,\)"),
    ({"generator": 3}, TypeError, "generator must be a torch.Generator"),
    ({"backend": "cuda"}, ValueError, r"backend must be one of \('auto', 'torch', 'triton'\)"),
    (
        {"feat": torch.randn(4, 3, 6, 4, dtype=torch.float64), "backend": "triton"},
        TypeError,
        "backend='triton' supports float16, bfloat16 and float32",
    ),
]


@pytest.mark.parametrize(("changes", "error", "message"), BAD_INPUTS)
def test_bad_input_is_named_in_the_error(changes, error, message):
    kwargs = {**GOOD, "block_size": (3, 2), "num_blocks": 1, **changes}
    feat, attn, labels = kwargs.pop("feat"), kwargs.pop("attn"), kwargs.pop("labels")
    with pytest.raises(error, match=message):
        a_hard_mix(feat, attn, labels, **kwargs)


def test_backend_environment_variable_is_checked(monkeypatch):
    monkeypatch.setenv("PMM_KERNELS_BACKEND", "fast")
    with pytest.raises(ValueError, match="PMM_KERNELS_BACKEND environment variable must be"):
        a_hard_mix(GOOD["feat"], GOOD["attn"], GOOD["labels"])


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="backend='triton' runs on CUDA tensors"):
        a_hard_mix(GOOD["feat"], GOOD["attn"], GOOD["labels"], backend="triton")


def test_saliency_checks_its_weights():
    with pytest.raises(ValueError, match=r"weights must be a floating \(N, C\)"):
        pmm_kernels.saliency(GOOD["feat"], torch.rand(3, 3))
