"""Tests of training._evaluate on a small simulated community (1,200 persons x 300 missions).

One community, one fitted model and one evaluation (~10 s) are shared by the module: the truth
view's structure, the engine against random and the oracle, the ranking by the ranker's own
order (base score, not the calibrated staircase), the off-policy block, and the held-out
candidates that serve ablations.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from support.simulated import simulated_frames

from matching import PriorRanker, Ranker
from training import (
    BASELINES,
    default_split,
    evaluate,
    fit_engine_model,
    ranking_score,
    truth_candidates,
    truth_metrics,
)
from training._evaluate import heldout_missions

K = 10
RANKINGS = ("engine", "oracle", *BASELINES)


@pytest.fixture(scope="module")
def community(tmp_path_factory):
    frames, truth = simulated_frames(tmp_path_factory.mktemp("synthetic"), 1200, 300, seed=0,
                                     fmt="parquet")
    split_at = default_split(frames)
    model = fit_engine_model(frames, split_at)
    assert isinstance(model.ranker, Ranker), model.info  # a learned ranker, not the prior
    report = evaluate(frames, model, split_at, truth=truth, k=K)
    return {"frames": frames, "truth": truth, "split_at": split_at, "model": model,
            "report": report}


def test_truth_view_structure(community):
    t = community["report"]["truth"]
    held = heldout_missions(community["frames"], community["split_at"])
    assert 0 < t["missions"] <= held.height
    assert t["candidates"] > 10 * t["missions"]  # pools of every eligible candidate
    for name in RANKINGS:
        es, ndcg = t[name]["expected_successes_at_k"], t[name]["ndcg_at_k"]
        assert 0 < es <= K and 0 < ndcg <= 1, name
        # nobody beats ranking by the true probability
        assert es <= t["oracle"]["expected_successes_at_k"] + 1e-9, name
    assert t["oracle"]["ndcg_at_k"] == pytest.approx(1.0)
    best = max(t[b]["expected_successes_at_k"] for b in BASELINES)
    assert t["engine_over_oracle"] == pytest.approx(
        t["engine"]["expected_successes_at_k"] / t["oracle"]["expected_successes_at_k"])
    assert t["engine_over_best_baseline"] == pytest.approx(
        t["engine"]["expected_successes_at_k"] / best)
    assert t["oracle_over_random"] >= 2.0  # the simulated signal is there to be learned
    # the policy's true value: expected successes per mission and the rate per offer
    assert 0 < t["policy_true_expected_successes"] <= K
    assert 0 < t["policy_true_success_rate"] < 1


def test_engine_beats_random_by_a_clear_margin(community):
    t = community["report"]["truth"]
    engine, random = (t[n]["expected_successes_at_k"] for n in ("engine", "random"))
    assert engine >= 1.3 * random, (engine, random)
    assert t["engine"]["ndcg_at_k"] > t["random"]["ndcg_at_k"] + 0.1


def test_ranking_score_breaks_calibrated_ties_by_base_score():
    class Staircase:
        """A calibrated staircase over a finer base score (what isotonic calibration gives)."""

        def predict_proba(self, frame):
            return np.array([0.5, 0.5, 0.2, 0.5])

        def predict_uncalibrated(self, frame):
            return np.array([1.0, 2.0, 0.0, 1.0])

    frame = pl.DataFrame({"candidate_id": ["a", "b", "c", "d"]})
    s = ranking_score(Staircase(), frame)
    assert s[1] > s[0] == s[3] > s[2]  # b first (higher base score), a and d tied, c last
    # without a base score (the day-one prior) the probability is the order
    prior = PriorRanker()
    feats = pl.DataFrame({n: [0.0, 1.0] for n in prior.feature_names_}).with_columns(
        pl.Series("candidate_id", ["x", "y"]))
    p = prior.predict_proba(feats)
    assert np.argsort(-ranking_score(prior, feats)).tolist() == np.argsort(-p).tolist()


def test_evaluate_ranks_by_base_score(community):
    c = community
    ranker = c["model"].ranker
    rows = truth_candidates(c["frames"], c["model"], c["split_at"], c["truth"])
    t = c["report"]["truth"]
    assert rows["mission_id"].n_unique() == t["missions"] and rows.height == t["candidates"]
    base = rows.with_columns(pl.Series("base", ranker.predict_uncalibrated(rows)))
    by_base = truth_metrics(base, "base", K)
    assert t["engine"]["expected_successes_at_k"] == pytest.approx(
        by_base["expected_successes_at_k"])
    assert t["engine"]["ndcg_at_k"] == pytest.approx(by_base["ndcg_at_k"])
    # the same order as score_candidates serves, mission by mission
    first = rows.filter(pl.col("mission_id") == rows["mission_id"][0])
    served, _ = ranker.score_candidates(first)
    by_score = first.with_columns(pl.Series("s", ranking_score(ranker, first))).sort(
        ["s", "candidate_id"], descending=[True, False])["candidate_id"].to_list()
    assert by_score == served.tolist()
    # the calibrated probability alone ties (isotonic steps): its ranking is a different one
    if ranker.calibration_ == "isotonic":
        assert rows["p_model"].n_unique() < rows.height
    by_p = truth_metrics(rows, "p_model", K)
    assert by_p["expected_successes_at_k"] <= t["oracle"]["expected_successes_at_k"]


def test_off_policy_block(community):
    o = community["report"]["off_policy"]
    # the simulator's hand picks (22 % of missions) carry no propensity: left out, counted
    hand_picks = community["frames"].assignments.filter(
        pl.col("mission_id").is_in(heldout_missions(community["frames"], community["split_at"])
                                   ["mission_id"].implode()) & pl.col("propensity").is_null())
    assert o["rows_without_propensity"] == hand_picks.height > 0
    assert 0 < o["uptake"] <= 1
    assert 0 < o["rows_used"] <= o["offers"]
    assert o["rows_used"] == pytest.approx(o["uptake"] * o["offers"], abs=0.5)
    for name in ("ips", "snips", "dr"):
        e = o[name]
        assert e["n_used"] == o["rows_used"]
        assert e["ci_low"] <= e["estimate"] <= e["ci_high"]
    assert 0 <= o["snips"]["estimate"] <= 1  # a success rate per offer
    assert o["policy_offers_per_mission"] >= 1


def test_policy_stays_in_the_truth_pool(community, monkeypatch):
    """With a truth file, the policy offers no candidate the truth cannot score."""
    import training._evaluate as E

    c = community
    seen = {}
    original = E._off_policy

    def spy(frames, held, policy, model, rows, seed):
        seen["policy"] = policy
        return original(frames, held, policy, model, rows, seed)

    monkeypatch.setattr(E, "_off_policy", spy)
    evaluate(c["frames"], c["model"], c["split_at"], truth=c["truth"], k=K, max_missions=10)
    policy = seen["policy"]
    pools = c["truth"].select("mission_id", pl.coalesce("person_id", "group_id")
                              .alias("candidate_id"))
    assert policy.height
    assert policy.join(pools, on=["mission_id", "candidate_id"], how="anti").height == 0


def test_off_policy_intervals_and_propensity_check(community):
    o = community["report"]["off_policy"]
    for name in ("ips", "snips", "dr"):
        assert o[name]["ci_method"] == "bootstrap-t" and o[name]["n_boot"] == 2000
    # weights of a mission sum to the policy's offers in expectation: same order here
    assert 0 < o["weight_sum_per_mission"]
    assert o["policy_offers_per_mission"] / 10 < o["weight_sum_per_mission"]
    assert o["weight_sum_per_mission"] < 10 * o["policy_offers_per_mission"]
