"""CMC / mAP / mINP against a hand-worked example and an independent slow implementation."""

import numpy as np
import pytest
import torch

from pmm_model.evaluation.metrics import (
    METRIC_KEYS,
    RankAccumulator,
    _stable_order,
    evaluate_rank,
)


def slow_evaluate(dist, q_pids, g_pids, q_camids, g_camids, max_rank):
    """One query at a time, straight from the protocol's definition (stable ranking)."""
    aps, inps, cmcs = [], [], []
    for i in range(len(dist)):
        order = np.argsort(dist[i], kind="stable")
        same_pid = g_pids[order] == q_pids[i]
        junk = same_pid & (g_camids[order] == q_camids[i])
        matches = same_pid[~junk]
        if not matches.any():
            continue
        hits, precisions = 0, []
        for position, is_match in enumerate(matches, start=1):
            if is_match:
                hits += 1
                precisions.append(hits / position)
        aps.append(sum(precisions) / len(precisions))
        hit_positions = np.flatnonzero(matches) + 1
        inps.append(len(hit_positions) / hit_positions[-1])
        cmcs.append([1.0 if hit_positions[0] <= k else 0.0 for k in range(1, max_rank + 1)])
    return np.mean(cmcs, axis=0), np.mean(aps), np.mean(inps), len(aps)


# Gallery:   g0      g1      g2      g3           g4      g5
g_pids = np.array([1, 1, 2, 0, 1, 3])  # g3 is a distractor (pid 0)
g_camids = np.array([0, 1, 0, 1, 2, 0])
q_pids = np.array([1, 2, 3])
q_camids = np.array([0, 1, 0])
hand_dist = np.array(
    [
        [0.1, 0.4, 0.2, 0.3, 0.9, 0.5],
        [0.3, 0.3, 0.3, 0.1, 0.2, 0.3],
        [0.5, 0.5, 0.5, 0.5, 0.5, 0.1],
    ]
)
# q0 (pid 1, cam 0): sorted g0 g2 g3 g1 g5 g4; g0 is pid 1 in cam 0 -> junk, removed.
#    Kept ranking g2 g3 g1 g5 g4: positives g1, g4 at ranks 3 and 5.
#    AP = (1/3 + 2/5) / 2 = 11/30; INP = 2/5; first hit at rank 3.
# q1 (pid 2, cam 1): ties at 0.3 keep gallery order: g3 g4 g0 g1 g2 g5; no junk.
#    The only positive g2 is at rank 5: AP = 1/5; INP = 1/5; first hit at rank 5.
# q2 (pid 3, cam 0): its only same-pid item g5 is in cam 0 -> junk; no valid match, skipped.
# mAP = (11/30 + 1/5) / 2 = 17/60; mINP = (2/5 + 1/5) / 2 = 3/10;
# CMC (2 valid queries): ranks 1-2: 0, ranks 3-4: 1/2, rank 5 onwards: 1.


def test_hand_example():
    r = evaluate_rank(hand_dist, q_pids, g_pids, q_camids, g_camids, max_rank=6)
    assert r.num_valid_queries == 2
    np.testing.assert_allclose(r.cmc, [0, 0, 0.5, 0.5, 1, 1])
    assert r.mAP == pytest.approx(17 / 60)
    assert r.mINP == pytest.approx(3 / 10)


def test_metrics_are_the_recorded_floats():
    # What runs write to metrics.json and studies compare: rank-1 is cmc[0], not a later rank.
    metrics = evaluate_rank(hand_dist, q_pids, g_pids, q_camids, g_camids, max_rank=6).metrics()
    assert metrics == pytest.approx({"rank1": 0.0, "mAP": 17 / 60, "mINP": 3 / 10})
    assert tuple(metrics) == METRIC_KEYS
    assert all(type(value) is float for value in metrics.values())  # JSON-ready, not numpy


def test_cmc_padded_past_a_small_gallery():
    r = evaluate_rank(hand_dist, q_pids, g_pids, q_camids, g_camids, max_rank=9)
    np.testing.assert_allclose(r.cmc, [0, 0, 0.5, 0.5, 1, 1, 1, 1, 1])


def test_torch_inputs_and_chunking_agree():
    expected = evaluate_rank(hand_dist, q_pids, g_pids, q_camids, g_camids, max_rank=6)
    as_t = [torch.from_numpy(a) for a in (hand_dist, q_pids, g_pids, q_camids, g_camids)]
    for chunk_size in (1, 2, None):
        r = evaluate_rank(*as_t, max_rank=6, chunk_size=chunk_size)
        np.testing.assert_array_equal(r.cmc, expected.cmc)
        assert (r.mAP, r.mINP) == (expected.mAP, expected.mINP)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int64])
def test_stable_order_matches_numpy(dtype):
    rng = np.random.default_rng(0)
    values = rng.integers(-4, 5, (9, 300)).astype(dtype)
    if np.issubdtype(dtype, np.floating):
        values[0, :4] = [0.0, -0.0, np.inf, -np.inf]  # -0.0 ties with (so follows) 0.0
        values[1:] += rng.choice([0, 0.5, -0.25], values[1:].shape).astype(dtype)
    order = _stable_order(torch.from_numpy(values))
    np.testing.assert_array_equal(order.numpy(), np.argsort(values, axis=1, kind="stable"))


@pytest.mark.parametrize("seed, dtype", [(s, np.float32) for s in range(5)] + [(5, np.float64)])
def test_matches_slow_loop_with_ties(seed, dtype):
    rng = np.random.default_rng(seed)
    num_q, num_g, max_rank = 40, 70, 10
    # Few ids and cameras give many positives and junk; integer distances give many ties.
    q_p, g_p = rng.integers(0, 8, num_q), rng.integers(0, 8, num_g)
    q_c, g_c = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
    dist = rng.integers(-2, 4, (num_q, num_g)).astype(dtype)
    cmc, m_ap, m_inp, n = slow_evaluate(dist, q_p, g_p, q_c, g_c, max_rank)
    for chunk_size in (None, 7):
        r = evaluate_rank(dist, q_p, g_p, q_c, g_c, max_rank=max_rank, chunk_size=chunk_size)
        assert r.num_valid_queries == n
        np.testing.assert_allclose(r.cmc, cmc, rtol=0, atol=1e-12)
        assert r.mAP == pytest.approx(m_ap, abs=1e-12)
        assert r.mINP == pytest.approx(m_inp, abs=1e-12)


def test_accumulator_blocks_equal_whole():
    rng = np.random.default_rng(1)
    dist = rng.random((30, 50))
    q_p, g_p = rng.integers(0, 5, 30), rng.integers(0, 5, 50)
    q_c, g_c = rng.integers(0, 2, 30), rng.integers(0, 2, 50)
    whole = evaluate_rank(dist, q_p, g_p, q_c, g_c, max_rank=20)
    acc = RankAccumulator(g_p, g_c, max_rank=20)
    for rows in (slice(0, 3), slice(3, 17), slice(17, 30)):
        acc.update(dist[rows], q_p[rows], q_c[rows])
    r = acc.result()
    np.testing.assert_array_equal(r.cmc, whole.cmc)
    assert (r.mAP, r.mINP, r.num_valid_queries) == (whole.mAP, whole.mINP, whole.num_valid_queries)


def test_no_valid_query_is_an_error():
    with pytest.raises(ValueError, match="no query has a valid"):
        evaluate_rank(hand_dist[2:], q_pids[2:], g_pids, q_camids[2:], g_camids)


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(distmat=hand_dist[:, :5]), "columns"),
        (dict(q_pids=q_pids[:2]), "rows"),
        (dict(distmat=hand_dist[0]), "2-D"),
        (dict(max_rank=0), "max_rank"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(distmat=np.where(hand_dist > 0.4, np.nan, hand_dist)), "NaN"),
    ],
)
def test_bad_input_value_errors(bad, match):
    args = (
        dict(distmat=hand_dist, q_pids=q_pids, g_pids=g_pids, q_camids=q_camids, g_camids=g_camids)
        | bad
    )
    with pytest.raises(ValueError, match=match):
        evaluate_rank(**args)


def test_bad_input_type_errors():
    with pytest.raises(TypeError, match="q_pids must hold integers"):
        evaluate_rank(hand_dist, q_pids.astype(float), g_pids, q_camids, g_camids)
    with pytest.raises(TypeError, match="g_pids must be a numpy array"):
        evaluate_rank(hand_dist, q_pids, list(g_pids), q_camids, g_camids)
