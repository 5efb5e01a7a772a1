"""Feature extraction, distances, chunked evaluation and re-ranking."""

import numpy as np
import pytest
import torch
from torch import nn

from pmm_model.evaluation.evaluator import (
    evaluate,
    evaluate_features,
    extract_features,
    pairwise_distance,
)
from pmm_model.evaluation.metrics import evaluate_rank
from pmm_model.evaluation.reranking import re_ranking


def id_set(seed, num_q=24, num_g=60, dim=16, num_ids=6, integer=False):
    """Features clustered by id, so rankings are neither trivial nor random."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_ids, dim, generator=gen) * 3
    q_p = torch.randint(0, num_ids, (num_q,), generator=gen)
    g_p = torch.randint(0, num_ids, (num_g,), generator=gen)
    qf = centres[q_p] + torch.randn(num_q, dim, generator=gen) * 2
    gf = centres[g_p] + torch.randn(num_g, dim, generator=gen) * 2
    if integer:
        # Small integers: every distance is exact whatever the matmul blocking, and ties occur.
        qf, gf = qf.round(), gf.round()
    q_c = torch.randint(0, 3, (num_q,), generator=gen)
    g_c = torch.randint(0, 3, (num_g,), generator=gen)
    return qf, gf, q_p.numpy(), g_p.numpy(), q_c.numpy(), g_c.numpy()


def test_pairwise_distance_is_plain_euclidean():
    qf, gf, *_ = id_set(0)
    for chunk_size in (None, 5):
        d = pairwise_distance(qf.double(), gf.double(), chunk_size=chunk_size)
        torch.testing.assert_close(d, torch.cdist(qf.double(), gf.double()))
    cos = pairwise_distance(qf, gf, metric="cosine")
    expected = 1 - nn.functional.normalize(qf, dim=1) @ nn.functional.normalize(gf, dim=1).T
    torch.testing.assert_close(cos, expected)


@pytest.mark.parametrize("chunk_size", [1, 7, None])
def test_chunked_equals_unchunked(chunk_size):
    qf, gf, q_p, g_p, q_c, g_c = id_set(1, integer=True)
    dense = evaluate_rank(pairwise_distance(qf, gf), q_p, g_p, q_c, g_c, max_rank=20)
    r = evaluate_features(qf, gf, q_p, g_p, q_c, g_c, max_rank=20, chunk_size=chunk_size)
    np.testing.assert_array_equal(r.cmc, dense.cmc)
    assert (r.mAP, r.mINP, r.num_valid_queries) == (dense.mAP, dense.mINP, dense.num_valid_queries)
    assert 0.3 < r.mAP < 1.0  # the clusters are informative but not perfect


def test_feature_errors():
    qf, gf, q_p, g_p, q_c, g_c = id_set(2)
    with pytest.raises(ValueError, match="share dim"):
        evaluate_features(qf, gf[:, :5], q_p, g_p, q_c, g_c)
    with pytest.raises(TypeError, match="query features must be a 2-D floating"):
        pairwise_distance(qf.long(), gf)
    with pytest.raises(ValueError, match="metric must be one of"):
        pairwise_distance(qf, gf, metric="manhattan")
    with pytest.raises(ValueError, match="q_pids"):
        evaluate_features(qf, gf, q_p[:3], g_p, q_c, g_c)


class Pixels(nn.Module):
    """Flattens the image: a feature that changes under a horizontal flip."""

    def forward(self, x):
        return x.flatten(1)


def batches(images, pids, camids, size=3):
    return [
        (
            images[i : i + size],
            torch.as_tensor(pids[i : i + size]),
            torch.as_tensor(camids[i : i + size]),
        )
        for i in range(0, len(images), size)
    ]


def test_extract_features_order_flip_and_mode():
    images = torch.randn(7, 3, 2, 2)
    pids, camids = np.arange(7) % 3, np.arange(7) % 2
    model = Pixels().train()
    feats, p, c = extract_features(model, batches(images, pids, camids), "cpu")
    torch.testing.assert_close(feats, images.flatten(1))
    np.testing.assert_array_equal(p, pids)
    np.testing.assert_array_equal(c, camids)
    assert model.training  # restored
    flipped, _, _ = extract_features(model, batches(images, pids, camids), "cpu", flip=True)
    torch.testing.assert_close(flipped, (images + images.flip(-1)).flatten(1) / 2)


def test_extract_features_rejects_bad_model_output():
    class TwoOutputs(nn.Module):
        def forward(self, x):
            return x.flatten(1), x.flatten(1)

    with pytest.raises(ValueError, match=r"must return a \(batch, dim\)"):
        extract_features(TwoOutputs(), batches(torch.zeros(2, 3, 2, 2), [0, 1], [0, 0]), "cpu")
    with pytest.raises(ValueError, match="no batches"):
        extract_features(Pixels(), [], "cpu")


def test_evaluate_end_to_end():
    qf, gf, q_p, g_p, q_c, g_c = id_set(3, dim=12)
    as_images = [f.reshape(-1, 3, 2, 2) for f in (qf, gf)]
    r = evaluate(
        Pixels(),
        batches(as_images[0], q_p, q_c),
        batches(as_images[1], g_p, g_c),
        "cpu",
        max_rank=10,
    )
    expected = evaluate_features(qf, gf, q_p, g_p, q_c, g_c, max_rank=10)
    np.testing.assert_array_equal(r.cmc, expected.cmc)
    assert r.mAP == expected.mAP


# ------------------------------------------------------------------------ re-ranking


def slow_re_ranking(q_g, q_q, g_g, k1, k2, lambda_value):
    """Zhong et al. 2017 written from the paper's definitions, one item at a time."""
    num_q, num_g = q_g.shape
    # Same float32 squaring and row normalisation as the implementation, so ties agree.
    d = np.block([[q_q, q_g], [q_g.T, g_g]]).astype(np.float32) ** 2
    d = d / d.max(axis=1, keepdims=True)
    n = len(d)
    ranking = [np.argsort(d[i], kind="stable") for i in range(n)]

    def nearest(i, k):  # N(i, k): the k nearest neighbours plus i itself
        return set(ranking[i][: k + 1].tolist())

    def reciprocal(i, k):  # R(i, k) = {j in N(i, k) : i in N(j, k)}
        return {j for j in nearest(i, k) if i in nearest(j, k)}

    v = np.zeros((n, n))
    for i in range(n):
        r_i = reciprocal(i, k1)
        expanded = set(r_i)
        for c in r_i:
            r_c = reciprocal(c, round(k1 / 2))
            if len(r_c & r_i) > 2 / 3 * len(r_c):
                expanded |= r_c
        cols = sorted(expanded)
        w = np.exp(-d[i, cols].astype(np.float64))
        v[i, cols] = w / w.sum()
    if k2 > 1:
        v = np.stack([v[ranking[i][:k2]].mean(axis=0) for i in range(n)])
    jaccard = np.zeros((num_q, num_g))
    for i in range(num_q):
        for g in range(num_g):
            a, b = v[i], v[num_q + g]
            jaccard[i, g] = 1 - np.minimum(a, b).sum() / np.maximum(a, b).sum()
    return (1 - lambda_value) * jaccard + lambda_value * d[:num_q, num_q:]


@pytest.mark.parametrize(
    "k1, k2, lam, integer",
    [
        (20, 6, 0.3, False),  # the defaults: k1 covers all 13 items here
        (4, 3, 0.3, False),
        (5, 1, 0.5, True),  # k1/2 rounds to 2; k2=1 skips query expansion; integer ties
        (3, 2, 0.0, True),
    ],
)
def test_re_ranking_matches_slow_reference(k1, k2, lam, integer):
    qf, gf, *_ = id_set(4, num_q=5, num_g=8, dim=4, num_ids=3, integer=integer)
    q_g, q_q, g_g = (pairwise_distance(a, b).numpy() for a, b in ((qf, gf), (qf, qf), (gf, gf)))
    got = re_ranking(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lam)
    assert got.shape == (5, 8) and got.dtype == np.float32
    np.testing.assert_allclose(got, slow_re_ranking(q_g, q_q, g_g, k1, k2, lam), atol=1e-5)


def test_evaluate_features_rerank():
    qf, gf, q_p, g_p, q_c, g_c = id_set(5, num_q=10, num_g=30)
    q_g, q_q, g_g = (pairwise_distance(a, b).numpy() for a, b in ((qf, gf), (qf, qf), (gf, gf)))
    expected = evaluate_rank(re_ranking(q_g, q_q, g_g), q_p, g_p, q_c, g_c, max_rank=10)
    r = evaluate_features(qf, gf, q_p, g_p, q_c, g_c, max_rank=10, rerank=True)
    assert (r.mAP, r.mINP) == (expected.mAP, expected.mINP)


def test_re_ranking_errors():
    d = np.ones((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="q_q_dist must have shape"):
        re_ranking(d, np.ones((3, 3)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="k1 must be a positive int"):
        re_ranking(d, np.ones((2, 2)), np.ones((3, 3)), k1=0)
    with pytest.raises(ValueError, match="lambda_value"):
        re_ranking(d, np.ones((2, 2)), np.ones((3, 3)), lambda_value=2.0)
    with pytest.raises(ValueError, match="finite"):
        re_ranking(d * np.nan, np.ones((2, 2)), np.ones((3, 3)))
