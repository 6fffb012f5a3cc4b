"""Tests of training._metrics: hand-computed values, edge cases, and simulations for the
off-policy estimators and the bootstrap, all seeded."""

from __future__ import annotations

import doctest
import json
import math

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training import _metrics
from training._metrics import (
    auc,
    bootstrap_ci,
    brier,
    by_segment,
    calibration_table,
    crossfit_recalibration,
    doubly_robust,
    expected_calibration_error,
    expected_successes_at_k,
    expected_successes_per_query,
    ips,
    mrr_at_k,
    ndcg_at_k,
    paired_bootstrap,
    ranking_metrics,
    ranking_metrics_per_query,
    recall_at_k,
    snips,
)

LOG3 = math.log2(3)


def test_docstring_examples_run():
    result = doctest.testmod(_metrics, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 20
    assert result.failed == 0


# ----------------------------------------------------------------------------------- AUC


def test_auc_hand_computed():
    # pairs (neg, pos): (0.1, 0.35) ok, (0.1, 0.8) ok, (0.4, 0.35) wrong, (0.4, 0.8) ok
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert auc([False, True], [0.9, 0.1]) == 0.0


def test_auc_ties_count_half():
    # pairs: (0.1, 0.5) 1, (0.1, 0.9) 1, (0.5, 0.5) 1/2, (0.5, 0.9) 1 -> 3.5 / 4
    assert auc([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9]) == 0.875
    assert auc([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3]) == 0.5


def test_auc_undefined_is_none():
    assert auc([], []) is None
    assert auc([1, 1, 1], [0.1, 0.2, 0.3]) is None
    assert auc([0, 0], [0.1, 0.2]) is None


def test_auc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500)
    s = rng.integers(0, 20, 500) / 20  # many ties
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert auc(pl.Series(y), pl.Series(s)) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize(
    "y, s",
    [([0, 2], [0.1, 0.2]), ([0, 1], [0.1, float("nan")]), ([0, 1], [0.1]), ([0, None], [1, 2])],
)
def test_auc_rejects_bad_input(y, s):
    with pytest.raises(ValueError):
        auc(y, s)


# ------------------------------------------------------------------- Brier and calibration


def test_brier_hand_computed():
    assert brier([1, 0], [0.8, 0.3]) == pytest.approx((0.2**2 + 0.3**2) / 2)
    assert brier([0, 1, 0, 1], [0.5] * 4) == 0.25
    assert brier([], []) is None
    with pytest.raises(ValueError):
        brier([1], [1.2])


def test_calibration_table_uniform_hand_computed():
    table = calibration_table([0, 1, 0, 1], [0.1, 0.2, 0.7, 0.9], n_bins=2, strategy="uniform")
    assert [r["bin"] for r in table] == [0, 1]
    assert [r["count"] for r in table] == [2, 2]
    assert table[0]["mean_predicted"] == pytest.approx(0.15)
    assert table[1]["mean_predicted"] == pytest.approx(0.8)
    assert [r["observed_rate"] for r in table] == [0.5, 0.5]
    assert (table[0]["lower"], table[0]["upper"], table[1]["upper"]) == (0.0, 0.5, 1.0)
    # 0.5 * |0.5 - 0.15| + 0.5 * |0.5 - 0.8|
    assert expected_calibration_error([0, 1, 0, 1], [0.1, 0.2, 0.7, 0.9], 2, "uniform") == \
        pytest.approx(0.325)


def test_calibration_uniform_edges_and_empty_bins():
    table = calibration_table([1, 0, 1], [0.3, 1.0, 0.0], n_bins=10, strategy="uniform")
    # 0.3 opens bin 3 ([0.3, 0.4)), 1.0 belongs to the closed last bin, empty bins left out
    assert [(r["bin"], r["count"]) for r in table] == [(0, 1), (3, 1), (9, 1)]


def test_calibration_quantile_equal_counts_and_ties():
    p = np.linspace(0.05, 0.95, 8)
    y = np.array([0, 0, 0, 1, 0, 1, 1, 1])
    table = calibration_table(y, p, n_bins=4, strategy="quantile")
    assert [r["count"] for r in table] == [2, 2, 2, 2]
    assert [r["observed_rate"] for r in table] == [0.0, 0.5, 0.5, 1.0]
    # all predictions tied: the repeated edges merge into one bin
    tied = calibration_table([0, 1, 1, 0], [0.4] * 4, n_bins=10, strategy="quantile")
    assert len(tied) == 1 and tied[0]["count"] == 4 and tied[0]["observed_rate"] == 0.5
    assert (tied[0]["bin"], tied[0]["lower"], tied[0]["upper"]) == (0, 0.4, 0.4)


def test_calibration_edge_cases():
    assert calibration_table([], []) == []
    assert expected_calibration_error([], []) is None
    # unequal bins weigh by count: 2/3 * |0.5 - 0.2| + 1/3 * |1 - 0.8|
    assert expected_calibration_error([0, 1, 1], [0.1, 0.3, 0.8], 2, "uniform") == \
        pytest.approx(0.8 / 3)
    # perfectly calibrated within each bin
    assert expected_calibration_error([0, 1, 1, 1], [0.5, 0.5, 1.0, 1.0], 2, "uniform") == 0.0
    with pytest.raises(ValueError):
        calibration_table([0, 1], [0.1, 0.2], strategy="kmeans")
    with pytest.raises(ValueError):
        calibration_table([0, 1], [0.1, 0.2], n_bins=0)


# ---------------------------------------------------------------- ranking metrics, one list


def test_ndcg_binary_hand_computed():
    assert ndcg_at_k([0, 1, 0, 1], k=2) == pytest.approx((1 / LOG3) / (1 + 1 / LOG3))
    assert ndcg_at_k([1, 1, 0, 0], k=2) == 1.0
    assert ndcg_at_k([0, 0, 0, 1], k=3) == 0.0


def test_ndcg_graded_ideal_uses_all_candidates():
    # the classic example: DCG@6 of [3, 2, 3, 0, 1, 2] is 6.861; with two more relevant
    # candidates ranked below 6 (gains 3 and 2) the ideal top 6 is [3, 3, 3, 2, 2, 2]
    gains = [3, 2, 3, 0, 1, 2, 3, 2]
    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains[:6]))
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate([3, 3, 3, 2, 2, 2]))
    assert dcg == pytest.approx(6.861, abs=1e-3) and idcg == pytest.approx(8.740, abs=1e-3)
    assert ndcg_at_k(gains, k=6) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(gains[:6], k=6) == pytest.approx(0.961, abs=1e-3)
    # true p_success as gains
    assert ndcg_at_k([0.1, 0.2, 0.9], k=1) == pytest.approx(0.1 / 0.9)


def test_ndcg_edge_cases():
    assert ndcg_at_k([], k=3) is None
    assert ndcg_at_k([0, 0, 0], k=3) is None
    # k larger than the list: the whole list
    assert ndcg_at_k([0, 1], k=50) == ndcg_at_k([0, 1], k=2)
    with pytest.raises(ValueError):
        ndcg_at_k([1, -0.5], k=2)
    with pytest.raises(ValueError):
        ndcg_at_k([1, 0], k=0)
    with pytest.raises(ValueError):
        ndcg_at_k([1, float("nan")], k=1)


def test_recall_and_mrr_hand_computed():
    assert recall_at_k([0, 1, 0, 1], k=2) == 0.5
    assert recall_at_k([0, 1, 0, 1], k=10) == 1.0
    assert recall_at_k([0, 0], k=1) is None
    assert recall_at_k([], k=1) is None
    assert mrr_at_k([0, 0, 1], k=3) == pytest.approx(1 / 3)
    assert mrr_at_k([1, 0, 1], k=3) == 1.0
    assert mrr_at_k([0, 0, 1], k=2) == 0.0  # relevant, but not within k
    assert mrr_at_k([0, 0], k=2) is None  # nothing relevant at all: undefined
    assert mrr_at_k([0, 0.3], k=5) == 0.5  # graded: any positive gain is relevant


# -------------------------------------------------------------- ranking metrics, a frame


def test_ranking_metrics_frame_hand_computed():
    frame = pl.DataFrame({
        "mission": ["m1", "m1", "m1", "m2", "m2", "m3", "m3"],
        "person": ["a", "b", "c", "a", "b", "a", "c"],
        "score": [0.9, 0.5, 0.1, 0.2, 0.7, 0.4, 0.3],
        "label": [0, 1, 1, 1, 0, 0, 0],
    })
    per = ranking_metrics_per_query(frame, "mission", "score", "label", k=2)
    assert per["mission"].to_list() == ["m1", "m2", "m3"]
    assert per["n_relevant"].to_list() == [2, 1, 0]
    # m1 ranked [0, 1, 1]: DCG@2 = 1/log2 3, IDCG@2 = 1 + 1/log2 3; recall 1/2; MRR 1/2
    # m2 ranked [0, 1]: NDCG@2 = (1/log2 3) / 1; recall 1; MRR 1/2
    ndcg_m1 = (1 / LOG3) / (1 + 1 / LOG3)
    assert per["ndcg_at_k"].to_list()[:2] == pytest.approx([ndcg_m1, 1 / LOG3])
    assert per["recall_at_k"].to_list() == [0.5, 1.0, None]
    assert per["mrr_at_k"].to_list() == [0.5, 0.5, None]
    m = ranking_metrics(frame.lazy(), "mission", "score", "label", k=2)
    assert m["ndcg_at_k"] == pytest.approx((ndcg_m1 + 1 / LOG3) / 2)
    assert m["recall_at_k"] == 0.75 and m["mrr_at_k"] == 0.5
    assert (m["n_queries"], m["n_queries_used"], m["n_queries_without_relevant"],
            m["n_rows"]) == (3, 2, 1, 7)
    json.dumps(m, allow_nan=False)


def test_ranking_metrics_ties_broken_by_id():
    frame = pl.DataFrame({"q": [1, 1, 1], "id": [3, 1, 2], "score": [0.5, 0.5, 0.5],
                          "label": [0, 0, 1]})
    # by id: [1, 2, 3] -> the relevant id 2 is second
    assert ranking_metrics(frame, "q", "score", "label", 1, id_col="id")["mrr_at_k"] == 0.0
    assert ranking_metrics(frame, "q", "score", "label", 2, id_col="id")["mrr_at_k"] == 0.5
    # the same however the frame is ordered
    for seed in range(3):
        shuffled = frame.sample(fraction=1.0, shuffle=True, seed=seed)
        assert ranking_metrics(shuffled, "q", "score", "label", 2, id_col="id")["mrr_at_k"] \
            == 0.5
    # without an id column, ties keep row order: the relevant row is third
    assert ranking_metrics(frame, "q", "score", "label", 3)["mrr_at_k"] == pytest.approx(1 / 3)


def test_ranking_metrics_edge_cases():
    empty = pl.DataFrame(schema={"q": pl.Int64, "score": pl.Float64, "label": pl.Int64})
    m = ranking_metrics(empty, "q", "score", "label", 5)
    assert m["ndcg_at_k"] is None and m["n_queries"] == 0 and m["n_rows"] == 0
    zeros = pl.DataFrame({"q": [1, 1], "score": [0.1, 0.2], "label": [0, 0]})
    m = ranking_metrics(zeros, "q", "score", "label", 5)
    assert m["ndcg_at_k"] is None and m["n_queries_without_relevant"] == 1
    with pytest.raises(ValueError, match="null"):
        ranking_metrics(pl.DataFrame({"q": [1, 1], "score": [0.1, None], "label": [0, 1]}),
                        "q", "score", "label", 2)
    with pytest.raises(ValueError, match="NaN"):
        ranking_metrics(pl.DataFrame({"q": [1, 1], "score": [0.1, float("nan")],
                                      "label": [0, 1]}), "q", "score", "label", 2)
    with pytest.raises(ValueError, match="non-negative"):
        ranking_metrics(pl.DataFrame({"q": [1], "score": [0.1], "label": [-1]}),
                        "q", "score", "label", 2)


@settings(max_examples=60, deadline=None)
@given(
    queries=st.lists(
        st.lists(st.tuples(st.integers(0, 4), st.sampled_from([0.0, 0.0, 1.0, 0.25, 0.9])),
                 min_size=1, max_size=8),
        min_size=1, max_size=5),
    k=st.integers(1, 10),
)
def test_frame_metrics_agree_with_list_metrics(queries, k):
    rows = [(qi, ci, s, g) for qi, cands in enumerate(queries)
            for ci, (s, g) in enumerate(cands)]
    frame = pl.DataFrame(rows, schema=["q", "id", "score", "gain"], orient="row")
    per = ranking_metrics_per_query(frame, "q", "score", "gain", k, id_col="id")
    es = expected_successes_per_query(frame, "q", "score", "gain", k, id_col="id")
    for qi, cands in enumerate(queries):
        # ranked by score descending, ties by candidate id (its position here)
        order = sorted(range(len(cands)), key=lambda ci: (-cands[ci][0], ci))
        gains = [cands[ci][1] for ci in order]
        row = per.row(qi, named=True)
        for name, fn in (("ndcg_at_k", ndcg_at_k), ("recall_at_k", recall_at_k),
                         ("mrr_at_k", mrr_at_k)):
            expected = fn(gains, k)
            assert (row[name] is None) == (expected is None)
            if expected is not None:
                assert row[name] == pytest.approx(expected, abs=1e-12)
        assert es["expected_successes"][qi] == pytest.approx(sum(gains[:k]), abs=1e-12)


# ---------------------------------------------------------------- expected successes


def test_expected_successes_hand_computed():
    truth = pl.DataFrame({
        "mission": [1, 1, 1, 2, 2],
        "person": ["b", "a", "c", "a", "b"],
        "score": [0.5, 0.5, 0.1, 0.2, 0.9],
        "p_success": [0.6, 0.2, 0.9, 0.4, 0.1],
    })
    # k=1: mission 1 tie a/b -> a (0.2); mission 2 -> b (0.1)
    assert expected_successes_at_k(truth, "mission", "score", "p_success", 1,
                                   id_col="person") == pytest.approx(0.15)
    # k=2: (0.2 + 0.6) and (0.1 + 0.4)
    assert expected_successes_at_k(truth, "mission", "score", "p_success", 2,
                                   id_col="person") == pytest.approx(0.65)
    # the oracle ranks by p_success itself: (0.9) and (0.4)
    assert expected_successes_at_k(truth, "mission", "p_success", "p_success", 1) == \
        pytest.approx(0.65)
    # k larger than every list: all of each query's probability mass
    assert expected_successes_at_k(truth, "mission", "score", "p_success", 99) == \
        pytest.approx((1.7 + 0.5) / 2)
    per = expected_successes_per_query(truth, "mission", "score", "p_success", 1,
                                       id_col="person")
    assert per["n_candidates"].to_list() == [3, 2]
    empty = truth.head(0)
    assert expected_successes_at_k(empty, "mission", "score", "p_success", 3) is None
    with pytest.raises(ValueError):
        expected_successes_at_k(truth.with_columns(p_success=pl.lit(1.5)), "mission",
                                "score", "p_success", 1)


# --------------------------------------------------------------- off-policy: hand values


def test_ips_snips_dr_tiny_table():
    r, p_log, p_new = [1, 0, 1, 1], [0.5, 0.25, 0.8, None], [1.0, 0.5, 0.2, 0.3]
    # weights of the three usable rows: 2, 2, 0.25; the last row has no propensity
    est = ips(r, p_log, p_new)
    assert est.estimate == pytest.approx((2 + 0 + 0.25) / 3)
    assert (est.n_used, est.n_left_out, est.n_queries, est.n_clipped) == (3, 1, 3, 0)
    assert est.effective_sample_size == pytest.approx(4.25**2 / 8.0625)
    # normal interval: per-query terms [2, 0, 0.25], sample sd 1.0897, se = sd / sqrt(3)
    se = np.std([2, 0, 0.25], ddof=1) / math.sqrt(3)
    assert est.ci_low == pytest.approx(0.75 - 1.959964 * se, abs=1e-6)
    assert est.ci_high == pytest.approx(0.75 + 1.959964 * se, abs=1e-6)
    assert est.ci_method == "normal"
    sn = snips(r, p_log, p_new)
    assert sn.estimate == pytest.approx(2.25 / 4.25)
    # ratio estimator: se = sqrt(sum(e^2) / ((n - 1) n)) / mean(w), e = w r - R w
    a, b = np.array([2, 0, 0.25]), np.array([2, 2, 0.25])
    e = a - sn.estimate * b
    se = math.sqrt((e**2).sum() / (2 * 3)) / b.mean()
    assert (sn.ci_low, sn.ci_high) == (pytest.approx(sn.estimate - 1.959964 * se, abs=1e-6),
                                       pytest.approx(sn.estimate + 1.959964 * se, abs=1e-6))
    dr = doubly_robust(r, p_log, p_new, [0.5] * 4, [0.6] * 4)
    assert dr.estimate == pytest.approx(((0.6 + 1) + (0.6 - 1) + (0.6 + 0.125)) / 3)
    assert dr.n_left_out == 1
    json.dumps(dr.to_dict(), allow_nan=False)


def test_weight_clipping():
    est = ips([1, 0, 1], [0.5, 0.25, 0.8], [1.0, 0.5, 0.2], max_weight=1.5)
    assert est.estimate == pytest.approx((1.5 + 0 + 0.25) / 3)
    assert est.n_clipped == 2 and est.max_weight == 1.5
    unclipped = ips([1, 0, 1], [0.5, 0.25, 0.8], [1.0, 0.5, 0.2])
    assert ips([1, 0, 1], [0.5, 0.25, 0.8], [1.0, 0.5, 0.2], max_weight=100).estimate == \
        unclipped.estimate


def test_off_policy_grouped_by_query():
    # two queries: q1 logged two rows, q2 one row
    r = [1, 1, 0]
    p_log = [0.5, 0.5, 0.4]
    p_new = [0.5, 1.0, 0.8]
    query = ["q1", "q1", "q2"]
    # per-query sums of w r: q1 = 1 + 2 = 3, q2 = 0
    est = ips(r, p_log, p_new, query=query)
    assert est.estimate == pytest.approx(1.5) and est.n_queries == 2
    # SNIPS: slate size * sum(w r) / sum(w) = 2 * 3 / 5
    assert snips(r, p_log, p_new, query=query, slate_size=2).estimate == pytest.approx(1.2)
    # DR: q1 = 0.9 + 1*(1-0.4) + 2*(1-0.4) = 2.7 ; q2 = 0.3 + 2*(0-0.2) = -0.1
    dr = doubly_robust(r, p_log, p_new, [0.4, 0.4, 0.2], [0.9, 0.9, 0.3], query=query)
    assert dr.estimate == pytest.approx((2.7 - 0.1) / 2)
    with pytest.raises(ValueError, match="same on every row"):
        doubly_robust(r, p_log, p_new, [0.4, 0.4, 0.2], [0.9, 0.8, 0.3], query=query)


def test_off_policy_counts_served_queries_without_logged_rows():
    r, p_log, p_new = [1, 0, 1], [0.5, 0.25, 0.8], [1.0, 0.5, 0.2]
    # a fourth query was served but logged nothing: it adds 0 to IPS and its direct-method
    # term (0.4) to DR, and counts in both means
    est = ips(r, p_log, p_new, n_queries_unlogged=1)
    assert est.estimate == pytest.approx(2.25 / 4)
    assert (est.n_queries, est.n_queries_unlogged) == (4, 1)
    dr = doubly_robust(r, p_log, p_new, [0.5] * 3, [0.6] * 3, unlogged_direct_method=[0.4])
    assert dr.estimate == pytest.approx((1.925 + 0.4) / 4)
    assert (dr.n_queries, dr.n_queries_unlogged) == (4, 1)
    # SNIPS normalises by the weights: same point estimate, wider interval
    plain, counted = snips(r, p_log, p_new), snips(r, p_log, p_new, n_queries_unlogged=1)
    assert counted.estimate == pytest.approx(plain.estimate)
    assert counted.n_queries == 4
    # served queries with nothing logged still give an estimate
    assert ips([], [], [], n_queries_unlogged=2).estimate == 0.0
    with pytest.raises(ValueError):
        ips(r, p_log, p_new, n_queries_unlogged=-1)


def test_off_policy_edge_cases():
    none_usable = ips([1, 0], [None, float("nan")], [0.5, 0.5])
    assert none_usable.estimate is None and none_usable.n_used == 0
    assert none_usable.n_left_out == 2 and none_usable.ci_low is None
    one = ips([1], [0.5], [0.5])
    assert one.estimate == 1.0 and one.ci_low is None  # no interval from one query
    # all new-policy weights zero: SNIPS is undefined, IPS is 0
    assert snips([1, 0], [0.5, 0.5], [0.0, 0.0]).estimate is None
    assert ips([1, 0], [0.5, 0.5], [0.0, 0.0]).estimate == 0.0
    empty = snips([], [], [])
    assert empty.estimate is None and empty.n_queries == 0
    for bad in (dict(p_log=[0.0]), dict(p_log=[1.5]), dict(p_new=[1.2])):
        kwargs = {"r": [1], "p_log": [0.5], "p_new": [0.5], **bad}
        with pytest.raises(ValueError):
            ips(**kwargs)
    with pytest.raises(ValueError):
        ips([1, 0], [0.5, 0.5], [0.5])
    with pytest.raises(ValueError):
        ips([1, 0], [0.5, 0.5], [0.5, 0.5], max_weight=0)
    with pytest.raises(ValueError):
        ips([1, 0], [0.5, 0.5], [0.5, 0.5], ci="jackknife")
    with pytest.raises(ValueError, match="missing"):
        ips([1, 0], [0.5, 0.5], [0.5, 0.5], query=["a", None])


def test_off_policy_bootstrap_is_seeded():
    rng = np.random.default_rng(0)
    r = rng.integers(0, 2, 200)
    p_log = rng.uniform(0.1, 0.9, 200)
    p_new = rng.uniform(0.0, 1.0, 200)
    a = ips(r, p_log, p_new, ci="bootstrap", n_boot=300, seed=7)
    b = ips(r, p_log, p_new, ci="bootstrap", n_boot=300, seed=7)
    c = ips(r, p_log, p_new, ci="bootstrap", n_boot=300, seed=8)
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
    assert (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)
    assert a.ci_low < a.estimate < a.ci_high
    assert a.ci_method == "bootstrap" and a.seed == 7 and a.n_boot == 300
    assert ips(r, p_log, p_new).n_boot is None  # normal interval: nothing random to report
    # the two interval methods agree roughly on a smooth statistic
    normal = ips(r, p_log, p_new)
    assert a.ci_high - a.ci_low == pytest.approx(normal.ci_high - normal.ci_low, rel=0.25)


# ---------------------------------------------------------- off-policy: simulation study


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _one_choice_log(seed: int, n_queries: int = 2000, n_cand: int = 8,
                    model_noise: float = 0.02) -> dict:
    """A logging policy choosing one candidate per query with known probabilities."""
    rng = np.random.default_rng(seed)
    q = rng.beta(2, 5, size=(n_queries, n_cand))  # true success probabilities
    signal = (q - q.mean()) / q.std()
    # the logging policy leans towards good candidates and explores a little
    mu = 0.8 * _softmax(1.0 * signal + rng.normal(size=q.shape)) + 0.2 / n_cand
    pi = _softmax(3.0 * signal)  # the new policy: sharper, better
    true_value = float((pi * q).sum(axis=1).mean())
    u = rng.random(n_queries)[:, None]
    choice = np.minimum((mu.cumsum(axis=1) < u).sum(axis=1), n_cand - 1)
    rows = np.arange(n_queries)
    r = (rng.random(n_queries) < q[rows, choice]).astype(float)
    rhat = np.clip(q + rng.normal(scale=model_noise, size=q.shape), 0, 1)
    return {
        "r": r, "p_log": mu[rows, choice], "p_new": pi[rows, choice],
        "rhat_logged": rhat[rows, choice], "dm": (pi * rhat).sum(axis=1),
        "true_value": true_value, "n_cand": n_cand,
    }


def _covers(est, truth: float) -> bool:
    return est.ci_low <= truth <= est.ci_high


def test_off_policy_unbiased_and_dr_has_lower_variance():
    seeds = range(20)
    errors = {"ips": [], "snips": [], "dr": []}
    covered = {"ips": 0, "snips": 0, "dr": 0}
    widths = {"ips": [], "dr": []}
    for seed in seeds:
        log = _one_choice_log(seed)
        truth = log["true_value"]
        results = {
            "ips": ips(log["r"], log["p_log"], log["p_new"]),
            "snips": snips(log["r"], log["p_log"], log["p_new"]),
            "dr": doubly_robust(log["r"], log["p_log"], log["p_new"], log["rhat_logged"],
                                log["dm"]),
        }
        for name, est in results.items():
            errors[name].append(est.estimate - truth)
            covered[name] += _covers(est, truth)
        widths["ips"].append(results["ips"].ci_high - results["ips"].ci_low)
        widths["dr"].append(results["dr"].ci_high - results["dr"].ci_low)
    for name, errs in errors.items():
        errs = np.asarray(errs)
        # unbiased: the mean error over seeds is within 3 standard errors of 0 ...
        assert abs(errs.mean()) < 3 * errs.std(ddof=1) / math.sqrt(len(errs)), name
        # ... and the 95% intervals cover the true value about 95% of the time
        assert covered[name] >= 17, (name, covered[name])
    # a good reward model: DR varies less than IPS, and says so in its interval. With 0/1
    # rewards the outcome noise is left to both (measured over 200 seeds: DR's spread is
    # 0.69 of IPS's, its interval narrower on every seed, at most 0.90 of IPS's width)
    assert np.std(errors["dr"]) < 0.9 * np.std(errors["ips"])
    assert all(d < 0.95 * i for d, i in zip(widths["dr"], widths["ips"], strict=True))


def _heavy_tailed_log(seed: int, n_queries: int = 300, n_cand: int = 20) -> tuple:
    """One logged choice per query, the new policy favouring what the logging one avoids.

    Weights are heavy-tailed: effective sample size about 15 of 300 rows (the simulated
    city's off-policy rows have about 30 of 1,300).
    """
    rng = np.random.default_rng(seed)
    q = rng.beta(2, 3, size=(n_queries, n_cand))
    score = rng.normal(size=(n_queries, n_cand))
    mu = _softmax(-1.0 * score) * 0.97 + 0.03 / n_cand
    pi = _softmax(1.5 * score)
    u = rng.random(n_queries)[:, None]
    choice = np.minimum((mu.cumsum(axis=1) < u).sum(axis=1), n_cand - 1)
    rows = np.arange(n_queries)
    r = (rng.random(n_queries) < q[rows, choice]).astype(float)
    return r, mu[rows, choice], pi[rows, choice], float((pi * q).sum(axis=1).mean())


def test_bootstrap_t_holds_coverage_with_heavy_tailed_weights():
    covered = {(ci, name): 0 for ci in ("normal", "bootstrap-t") for name in ("ips", "snips")}
    for seed in range(100):
        r, p_log, p_new, truth = _heavy_tailed_log(seed)
        for ci, name in covered:
            fn = ips if name == "ips" else snips
            est = fn(r, p_log, p_new, ci=ci, n_boot=400, seed=seed)
            covered[ci, name] += _covers(est, truth)
    # measured: normal 77 / 79 of 100 (ips / snips), percentile 78 / 84, bootstrap-t 87 / 87
    for name in ("ips", "snips"):
        assert covered["bootstrap-t", name] >= covered["normal", name] + 5, covered
        assert covered["bootstrap-t", name] >= 82, covered


def test_bootstrap_t_is_seeded_and_reported():
    r, p_log, p_new, _ = _heavy_tailed_log(0)
    a = snips(r, p_log, p_new, ci="bootstrap-t", n_boot=300, seed=3)
    b = snips(r, p_log, p_new, ci="bootstrap-t", n_boot=300, seed=3)
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
    assert a.ci_low < a.estimate < a.ci_high
    assert a.ci_method == "bootstrap-t" and a.n_boot == 300 and a.seed == 3
    # a skewed statistic: the interval reaches further above the estimate than below
    e = ips(r, p_log, p_new, ci="bootstrap-t", n_boot=300, seed=3)
    assert e.ci_high - e.estimate > e.estimate - e.ci_low


def test_crossfit_recalibration_removes_a_drift_out_of_fold():
    rng = np.random.default_rng(0)
    n_queries, per = 400, 3
    group = np.repeat(np.arange(n_queries), per)
    model = rng.uniform(0.2, 0.9, n_queries * per)
    # the world drifted: true log-odds are 0.8 below the model's
    truth = 1 / (1 + np.exp(-(np.log(model / (1 - model)) - 0.8)))
    y = (rng.random(len(truth)) < truth).astype(float)
    fitted, applied = crossfit_recalibration(y, model, group, model[:30], group[:30], seed=1)
    assert abs(fitted.mean() - y.mean()) < 0.01  # calibrated in the large
    # measured: mean absolute error 0.029 after, 0.165 before
    assert np.abs(fitted - truth).mean() < 0.3 * np.abs(model - truth).mean()
    # applied rows of a query get the same map as its fitted rows
    np.testing.assert_allclose(applied, fitted[:30])
    # out of fold: a query's own outcomes do not move its recalibrated probability
    y2 = y.copy()
    y2[group == 5] = 1 - y2[group == 5]
    fitted2, _ = crossfit_recalibration(y2, model, group, [], [], seed=1)
    np.testing.assert_allclose(fitted2[group == 5], fitted[group == 5])
    with pytest.raises(ValueError):
        crossfit_recalibration(y, model, group[:-1], [], [])
    with pytest.raises(ValueError):
        crossfit_recalibration(y, model, group, [], [], n_folds=1)
    with pytest.raises(ValueError):
        crossfit_recalibration([2.0], [0.5], [0], [], [])


def test_doubly_robust_is_robust_to_either_mistake():
    bad_model, bad_propensity, ips_bad = 0, 0, 0
    for seed in range(10):
        log = _one_choice_log(seed)
        truth = log["true_value"]
        # a useless reward model (a constant): still unbiased thanks to the propensities
        est = doubly_robust(log["r"], log["p_log"], log["p_new"],
                            np.full(len(log["r"]), 0.3), np.full(len(log["r"]), 0.3))
        bad_model += _covers(est, truth)
        # wrong propensities (uniform) but a good reward model: still close
        uniform = np.full(len(log["r"]), 1 / log["n_cand"])
        est = doubly_robust(log["r"], uniform, log["p_new"], log["rhat_logged"], log["dm"])
        bad_propensity += _covers(est, truth)
        ips_bad += _covers(ips(log["r"], uniform, log["p_new"]), truth)
    assert bad_model >= 8 and bad_propensity >= 8
    assert ips_bad <= 2  # IPS needs its propensities: it is biased without them


def test_off_policy_slates_with_inclusion_probabilities():
    """Several logged rows per query (independent inclusion, so some queries log none),
    new policy's inclusion probabilities summing to k > 1; bootstrap intervals."""
    covered = {"ips": 0, "snips": 0, "dr": 0}
    for seed in range(8):
        rng = np.random.default_rng(100 + seed)
        n_q, n_c = 1500, 6
        q = rng.beta(2, 5, size=(n_q, n_c))
        mu = rng.uniform(0.1, 0.6, size=(n_q, n_c))
        rho = np.clip(q * 1.5 + rng.uniform(0, 0.2, size=(n_q, n_c)), 0, 1)
        truth = float((rho * q).sum(axis=1).mean())
        shown = rng.random((n_q, n_c)) < mu
        qi, ci = np.nonzero(shown)
        r = (rng.random(len(qi)) < q[qi, ci]).astype(float)
        rhat = np.clip(q + rng.normal(scale=0.03, size=q.shape), 0, 1)
        unlogged = np.setdiff1d(np.arange(n_q), qi)
        assert len(unlogged) > 50  # the case that matters here
        dm = (rho * rhat).sum(axis=1)
        common = {"query": qi, "ci": "bootstrap", "n_boot": 300, "seed": seed}
        results = {
            "ips": ips(r, mu[qi, ci], rho[qi, ci], n_queries_unlogged=len(unlogged),
                       **common),
            "snips": snips(r, mu[qi, ci], rho[qi, ci], slate_size=rho.sum(axis=1).mean(),
                           n_queries_unlogged=len(unlogged), **common),
            "dr": doubly_robust(r, mu[qi, ci], rho[qi, ci], rhat[qi, ci], dm[qi],
                                unlogged_direct_method=dm[unlogged], **common),
        }
        for name, est in results.items():
            assert est.n_queries == n_q and est.n_queries_unlogged == len(unlogged)
            covered[name] += _covers(est, truth)
    assert min(covered.values()) >= 6, covered


# ------------------------------------------------------------------------------ bootstrap


def test_bootstrap_ci_basics():
    res = bootstrap_ci([1.0, 2.0, 3.0, 4.0], n_boot=500, seed=3)
    assert res.estimate == 2.5 and res.n == 4 and res.n_boot_used == 500
    assert 1.0 <= res.ci_low < 2.5 < res.ci_high <= 4.0
    assert bootstrap_ci([1.0, 2.0, 3.0, 4.0], n_boot=500, seed=3) == res
    assert bootstrap_ci([5.0, 5.0, 5.0]).to_dict()["ci_low"] == 5.0
    assert bootstrap_ci([]).estimate is None
    single = bootstrap_ci([0.3])
    assert single.estimate == 0.3 and single.ci_low is None
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, 2.0], alpha=1.5)


def test_bootstrap_ci_with_a_statistic_over_frame_rows():
    rng = np.random.default_rng(5)
    frame = pl.DataFrame({"y": rng.integers(0, 2, 300), "s": rng.random(300)})
    res = bootstrap_ci(frame, lambda f: auc(f["y"], f["s"]), n_boot=200, seed=0)
    assert res.estimate == auc(frame["y"], frame["s"])
    assert res.ci_low < res.estimate < res.ci_high
    # resamples where the statistic is undefined are dropped and counted
    tiny = pl.DataFrame({"y": [0, 1], "s": [0.2, 0.8]})
    res = bootstrap_ci(tiny, lambda f: auc(f["y"], f["s"]), n_boot=200, seed=0)
    assert 0 < res.n_boot_used < 200
    json.dumps(res.to_dict(), allow_nan=False)


def test_bootstrap_ci_coverage():
    # the percentile interval of a mean covers the true mean about 95% of the time
    rng = np.random.default_rng(11)
    hits = 0
    for i in range(200):
        res = bootstrap_ci(rng.exponential(1.0, 60), n_boot=300, seed=i)
        hits += res.ci_low <= 1.0 <= res.ci_high
    assert 0.88 <= hits / 200 <= 0.99


def test_paired_bootstrap():
    res = paired_bootstrap([0.9, 0.8, 0.7, None], [0.5, 0.6, 0.7, 0.2], n_boot=500, seed=1)
    assert res.mean_diff == pytest.approx(0.2)
    assert (res.mean_a, res.mean_b) == (pytest.approx(0.8), pytest.approx(0.6))
    assert (res.n, res.n_left_out) == (3, 1)
    assert res.share_a_better > 0.9 and res.ci_low >= 0.0
    rng = np.random.default_rng(2)
    base = rng.random(400)
    better = paired_bootstrap(base + 0.05 + rng.normal(0, 0.05, 400), base, seed=0)
    assert better.share_a_better > 0.99 and better.ci_low > 0
    assert better.ci_low < 0.05 < better.ci_high
    worse = paired_bootstrap(base, base + 0.05 + rng.normal(0, 0.05, 400), seed=0)
    assert worse.share_a_better < 0.01 and worse.ci_high < 0
    # pairing matters: a shared per-query effect cancels, so the interval is much tighter
    # than comparing two independent means would give
    noisy = rng.normal(0, 1, 400)
    paired = paired_bootstrap(noisy + 0.1 + rng.normal(0, 0.01, 400), noisy, seed=0)
    assert paired.ci_low < paired.mean_diff < paired.ci_high
    assert abs(paired.mean_diff - 0.1) < 0.003
    assert paired.ci_high - paired.ci_low < 0.01  # independent means: about 0.28 wide
    # ties count half: identical models give 0.5, not 0
    assert paired_bootstrap(base, base.copy(), n_boot=200).share_a_better == 0.5
    # diffs [1, 0]: a resample's mean diff is 0 (a tie) with probability 1/4
    tie = paired_bootstrap([1.0, 0.0], [0.0, 0.0], n_boot=4000, seed=0)
    assert tie.share_a_better == pytest.approx(0.75 + 0.5 * 0.25, abs=0.02)
    assert paired_bootstrap([None], [0.5]).mean_diff is None
    with pytest.raises(ValueError):
        paired_bootstrap([0.1, 0.2], [0.1])
    json.dumps(res.to_dict(), allow_nan=False)


# ------------------------------------------------------------------------------- segments


def test_by_segment_suppresses_small_cells():
    frame = pl.DataFrame({
        "area": ["north"] * 4 + ["south"] * 30 + [None] * 12,
        # south: 30 rows about only 9 distinct people -> suppressed
        "person_id": list(range(4)) + [100 + i % 9 for i in range(30)] + list(range(200, 212)),
        "label": [1, 0, 0, 0] + [1] * 30 + [0, 1] * 6,
    })
    seen = []

    def metric(part: pl.DataFrame) -> float:
        seen.append(part["area"][0])
        return float(part["label"].mean())

    rows = by_segment(frame, "area", metric, min_count=10)
    assert [r["segment"] for r in rows] == ["north", "south", None]
    assert rows[0] == {"segment": "north", "suppressed": True, "n_people": None,
                       "n_rows": None, "value": None}
    assert rows[1]["suppressed"] and rows[1]["value"] is None
    assert rows[2] == {"segment": None, "suppressed": False, "n_people": 12, "n_rows": 12,
                       "value": 0.5}
    assert seen == [None]  # the metric never ran on a suppressed segment
    assert by_segment(frame, "area", metric, min_count=9)[1]["value"] == 1.0
    json.dumps(rows, allow_nan=False)


def test_by_segment_counts_distinct_people_not_rows_or_nulls():
    frame = pl.DataFrame({"seg": ["a"] * 5, "person_id": [1, 1, 2, None, None],
                          "score": [0.1] * 5})
    rows = by_segment(frame, "seg", lambda f: f.height, min_count=3)
    assert rows[0]["suppressed"]
    rows = by_segment(frame, "seg", lambda f: f.height, min_count=2)
    assert rows[0]["n_people"] == 2 and rows[0]["value"] == 5
    with pytest.raises(ValueError):
        by_segment(frame, "seg", len, min_count=0)
    with pytest.raises(ValueError):
        by_segment(frame, "seg", len, person_col="member_id")
    # with a ranking metric per segment
    ranked = pl.DataFrame({"seg": ["a"] * 12, "person_id": list(range(12)),
                           "mission": [i // 3 for i in range(12)],
                           "score": [0.3, 0.2, 0.1] * 4, "label": [0, 1, 0] * 4})
    rows = by_segment(ranked, "seg", lambda f: ranking_metrics(f, "mission", "score",
                                                               "label", 1))
    assert rows[0]["value"]["mrr_at_k"] == 0.0 and rows[0]["value"]["n_queries"] == 4
