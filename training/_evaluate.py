"""The evaluation protocol of DESIGN.md: a time split, two views, one JSON.

Fit on outcomes measured before T (:func:`training.fit_engine_model`); evaluate on missions
created at or after T whose measurement window has closed:

- **logged outcomes**: AUC, Brier score and a calibration table over the held-out
  assignments' verified outcomes; NDCG@k and recall@k over the assigned candidates of each
  mission; IPS, SNIPS and doubly-robust estimates of the new shortlist policy's value from
  the logged propensities (rows without one are left out and counted);
- **truth** (synthetic communities only): expected successes in the top k and NDCG@k over
  every eligible candidate for the engine, the oracle and the baselines (random, nearest,
  most experienced, best past success rate), and the true value of the new policy next to
  its off-policy estimates.

Every figure is also split by segment (newcomers vs established, with vs without lived
experience, by area) with cells about fewer than 10 people suppressed.

Rankings (NDCG, recall, AUC, expected successes@k) follow the ranker's own order, as
:meth:`~matching.BaseRanker.score_candidates` serves it: by calibrated probability, ties
broken by the base model's score. An isotonic calibration is a staircase: ranking by the
calibrated probability alone would leave whole steps of candidates in id order and understate
the engine (by 0.01-0.02 of the oracle's expected successes on the simulated city).

The new policy is the engine's shortlist policy, run as of each mission's week with k = the
number of candidates the logging policy offered the mission; its probability of offering a
candidate is its Monte Carlo top-k inclusion probability. An offer yields a result only when
it is taken up (accepted, not withdrawn, outcome verified); people decide that, not the
policy, so a logged row with a result was logged with probability ``propensity x uptake``,
``uptake`` being the share of the held-out missions' logged offers that have a result. IPS and
DR, over those rows, estimate the expected successes per mission of the policy's offers,
were each taken up: what the truth's ``policy_true_expected_successes`` gives (the truth knows
no acceptance). SNIPS normalises by the weights and estimates the success rate per offer
(``policy_true_success_rate``). One share of uptake for every offer is an approximation: the
simulator draws each person's responsiveness independently of their success, but the new
policy may offer more or less responsive people than the logging one did (a per-person
uptake model would remove it); the intervals leave out the sampling error of ``uptake``.
Intervals are studentised bootstraps over missions (:func:`~training.ips`, ``ci=
"bootstrap-t"``): a few large weights carry the estimates. DR's reward model is the engine's
probability recalibrated on the held-out logged outcomes, cross-fitted by mission
(:func:`~training._metrics.crossfit_recalibration`): the model is fitted before T and its base
rate can drift after it; DR corrects that only as far as the propensities are right.
``weight_sum_per_mission`` checks them: it should be near ``policy_offers_per_mission``.

With a truth file, the policy runs on the truth's pool of each mission (who was eligible at
its first shortlist): candidates the week's snapshot finds eligible but the pool lacks (they
took another mission during the week) are excluded, as the hard rules at serving time would.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from features import CommunitySnapshot, build_features
from graph._community_graph import CommunityGraph, community_graph_from_frames
from graph._frames import CommunityFrames
from matching import (
    MatchingEngine,
    ShortlistConfig,
    build_training_set,
    labelled_assignments,
    snapshot_time,
)
from training._metrics import (
    auc,
    brier,
    by_segment,
    calibration_table,
    crossfit_recalibration,
    doubly_robust,
    expected_calibration_error,
    expected_successes_at_k,
    ips,
    ndcg_at_k,
    ranking_metrics,
    snips,
)
from training._pipeline import EngineModel, measured_missions

__all__ = ["BASELINES", "default_split", "evaluate", "heldout_missions", "ranking_score",
           "truth_candidates", "truth_metrics"]

MIN_CELL = 10
# Baselines: a score per candidate from its features (higher is better).
BASELINES: dict[str, Any] = {
    "random": None,
    "nearest": lambda f: -f["distance_km"].fill_nan(1e9).fill_null(1e9),
    "most_experienced": lambda f: f["n_outcomes"],
    "best_past_success_rate": lambda f: f["tr_rate"],
}


def default_split(frames: CommunityFrames, share: float = 0.8) -> datetime:
    """The time at which ``share`` of the missions (by ``created_at``) had been created."""
    created = frames.missions["created_at"].sort()
    if created.is_empty():
        raise ValueError("the store holds no mission: nothing to split")
    return created[min(len(created) - 1, int(share * len(created)))]


def ranking_score(ranker: Any, frame: pl.DataFrame) -> np.ndarray:
    """The ranker's order of the rows of ``frame`` as a score (higher: ranked first).

    The order :meth:`~matching.BaseRanker.score_candidates` serves: calibrated probability,
    ties broken by the base model's own score (``predict_uncalibrated``, when the ranker has
    one). As the calibration never decreases with the base score, this is the base score's
    order. Rows left tied (equal scores) keep equal values, for the caller's own tie-break.
    """
    p = np.asarray(ranker.predict_proba(frame), dtype=float)
    base = getattr(ranker, "predict_uncalibrated", None)
    s = np.asarray(base(frame), dtype=float) if base is not None else p
    if not len(p):
        return p
    order = np.lexsort((-s, -p))
    key = np.stack([p[order], s[order]])
    # dense ranks: a new rank wherever (p, s) changes along the order
    new = np.r_[True, np.any(key[:, 1:] != key[:, :-1], axis=0)]
    out = np.empty(len(p))
    out[order] = -np.cumsum(new).astype(float)
    return out


def data_end(frames: CommunityFrames) -> datetime | None:
    """The latest time the store knows of: ``as_of_time``, else the latest mission created,
    assignment made or outcome measured; ``None`` for an empty store."""
    if frames.as_of_time is not None:
        return frames.as_of_time
    times = [t for t in (frames.missions["created_at"].max(),
                         frames.assignments["assigned_at"].max(),
                         frames.outcomes["measured_at"].max()) if t is not None]
    return max(times) if times else None


def heldout_missions(frames: CommunityFrames, split_at: datetime) -> pl.DataFrame:
    """Missions created at or after ``split_at`` whose measurement is complete.

    Closed, and complete as of the store's latest data (:func:`data_end`,
    :func:`~training.measured_missions`): a mission that closed last week may have reported
    its successes and not yet its failures, as :func:`~training.training_rows` guards
    against before the split.
    """
    closed = frames.missions.filter(
        (pl.col("created_at") >= split_at) & (pl.col("status") == "closed"))
    end = data_end(frames)
    if end is not None:
        # just after the latest data: what was reported at that very time counts
        measured = measured_missions(frames, end + timedelta(microseconds=1))
        closed = closed.filter(pl.col("mission_id").is_in(measured.implode()))
    return closed.sort("created_at", "mission_id")


def _segments(frames: CommunityFrames, rows: pl.DataFrame, newcomer_outcomes: int
              ) -> pl.DataFrame:
    """Person-level segment columns for person rows (groups: segment 'group')."""
    persons = frames.persons.select(
        "person_id", "area_id",
        pl.when(pl.col("lived_experience").is_not_null()).then(pl.lit("with"))
        .otherwise(pl.lit("without")).alias("lived_experience"))
    out = rows.join(persons, left_on="candidate_id", right_on="person_id", how="left")
    return out.with_columns(
        pl.when(pl.col("kind") == "group").then(pl.lit("group"))
        .when(pl.col("n_outcomes") < newcomer_outcomes).then(pl.lit("newcomer"))
        .otherwise(pl.lit("established")).alias("experience"),
        pl.col("lived_experience").fill_null("group"),
        pl.col("area_id").fill_null("group"),
        pl.col("candidate_id").alias("person_id"),
    )


def _logged_metrics(frame: pl.DataFrame, k: int) -> dict[str, Any]:
    y = frame["label"].cast(pl.Int8).to_numpy()
    p = frame["p"].to_numpy()
    out: dict[str, Any] = {"n": frame.height, "positives": int(y.sum()),
                           "auc": auc(y, frame["rank_score"].to_numpy()), "brier": brier(y, p),
                           "mean_predicted": float(p.mean()) if len(p) else None,
                           "observed_rate": float(y.mean()) if len(y) else None}
    if frame["mission_id"].n_unique() and frame.height:
        out.update({f"ranking_{key}": v for key, v in ranking_metrics(
            frame.with_columns(pl.col("label").cast(pl.Int8)), "mission_id", "rank_score",
            "label", k, id_col="candidate_id").items() if key != "k"})
    return out


def evaluate(frames: CommunityFrames, model: EngineModel, split_at: datetime, *,
             truth: pl.DataFrame | None = None, k: int = 10, graph: CommunityGraph | None = None,
             config: ShortlistConfig | None = None, seed: int = 0,
             max_missions: int | None = None, show_progress: bool = False) -> dict[str, Any]:
    """Evaluate ``model`` on the missions after ``split_at``; returns a JSON-able dict."""
    config = config or ShortlistConfig()
    graph = graph if graph is not None else community_graph_from_frames(frames)
    held = heldout_missions(frames, split_at)
    if max_missions is not None:
        held = held.head(max_missions)
    held_ids = held["mission_id"].implode()
    report: dict[str, Any] = {
        "split_at": split_at.isoformat(), "k": k, "model_version": model.version,
        "heldout_missions": held.height,
    }

    # -- view 1: logged outcomes -----------------------------------------------------------
    labelled = labelled_assignments(frames).filter(pl.col("mission_id").is_in(held_ids))
    ts = build_training_set(frames, model.feature_model, labelled, graph=graph,
                            show_progress=show_progress)
    rows = ts.rows
    if rows.height:
        rows = rows.with_columns(
            pl.Series("p", np.asarray(model.ranker.predict_proba(rows), dtype=float)),
            pl.Series("rank_score", ranking_score(model.ranker, rows)))
        logged = _logged_metrics(rows, k)
        y = rows["label"].cast(pl.Int8).to_numpy()
        logged["calibration"] = calibration_table(y, rows["p"].to_numpy(), n_bins=10)
        logged["expected_calibration_error"] = expected_calibration_error(
            y, rows["p"].to_numpy(), n_bins=10)
        seg = _segments(frames, rows, config.newcomer_outcomes)
        logged["segments"] = {
            col: by_segment(seg, col, lambda f: _logged_metrics(f, k), MIN_CELL)
            for col in ("experience", "lived_experience", "area_id")
        }
    else:
        logged = {"n": 0}
    logged["rows_left_out_unknown_candidate"] = ts.skipped_unknown_candidate
    report["logged"] = logged

    # -- the new policy, as of each mission's week ------------------------------------------
    pools = _truth_pools(truth, held)
    policy_rows, truth_rows = [], []
    all_assign = frames.assignments.filter(pl.col("mission_id").is_in(held_ids))
    for i, (m, engine) in enumerate(_engines_by_week(frames, model, held, graph, config)):
        offered = all_assign.filter((pl.col("mission_id") == m["mission_id"])
                                    & pl.col("shortlist_id").is_not_null())
        k_m = max(1, offered.height)
        pool = pools.get(m["mission_id"])
        if truth is not None and pool is None:
            continue  # nobody was eligible at its first shortlist: the truth scores no one
        exclude = _outside_pool(engine, m, pool) if pool is not None else []
        result = engine.shortlist(m["mission_id"], k=k_m, seed=seed + i, exclude=exclude,
                                  explain=False)
        scored = result.scored
        if scored is not None and scored.height:
            policy_rows.append(scored.select("kind", "candidate_id", "p_success", "propensity")
                               .with_columns(pl.lit(m["mission_id"]).alias("mission_id"),
                                             pl.lit(k_m).alias("k_m")))
        if pool is not None:
            truth_rows.append(_truth_rows(engine, m, pool))
    policy = (pl.concat(policy_rows) if policy_rows else pl.DataFrame(
        schema={"kind": pl.String, "candidate_id": pl.String, "p_success": pl.Float64,
                "propensity": pl.Float64, "mission_id": pl.String, "k_m": pl.Int32}))
    report["off_policy"] = _off_policy(frames, held, policy, model, rows, seed)

    # -- view 2: truth ------------------------------------------------------------------------
    truth_rows = [t for t in truth_rows if t.height]
    if truth is not None and truth_rows:
        report["truth"] = _truth_view(pl.concat(truth_rows), policy, k, seed, config)
    return report


def truth_candidates(frames: CommunityFrames, model: EngineModel, split_at: datetime,
                     truth: pl.DataFrame, *, graph: CommunityGraph | None = None,
                     config: ShortlistConfig | None = None,
                     max_missions: int | None = None) -> pl.DataFrame:
    """Every truth candidate of the held-out missions with its features, as :func:`evaluate`
    builds them (as of each mission's week).

    Columns: ``mission_id``, ``kind``, ``candidate_id``, every feature, ``p_model`` (the
    calibrated probability), ``engine`` (:func:`ranking_score`) and ``p_success`` (the
    truth). Serves ablations: refit a ranker on other features, rescore these rows.
    """
    config = config or ShortlistConfig()
    graph = graph if graph is not None else community_graph_from_frames(frames)
    held = heldout_missions(frames, split_at)
    if max_missions is not None:
        held = held.head(max_missions)
    pools = _truth_pools(truth, held)
    parts = [_truth_rows(engine, m, pools[m["mission_id"]])
             for m, engine in _engines_by_week(frames, model, held, graph, config)
             if m["mission_id"] in pools]
    parts = [p for p in parts if p.height]
    return pl.concat(parts) if parts else pl.DataFrame()


def _engines_by_week(frames: CommunityFrames, model: EngineModel, held: pl.DataFrame,
                     graph: CommunityGraph, config: ShortlistConfig
                     ) -> Iterator[tuple[dict, MatchingEngine]]:
    """Each held-out mission with the engine as of its week (one week's engine at a time:
    snapshots are large)."""
    current: tuple[datetime, MatchingEngine] | None = None
    for m in held.iter_rows(named=True):
        when = snapshot_time(m["created_at"])
        if current is None or current[0] != when:
            current = (when, MatchingEngine(frames, model.feature_model, model.ranker, now=when,
                                            config=config, graph=graph))
        yield m, current[1]


def _truth_pools(truth: pl.DataFrame | None, held: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """The truth rows of each held-out mission (mission_id -> frame)."""
    if truth is None:
        return {}
    rows = truth.filter(pl.col("mission_id").is_in(held["mission_id"].implode()))
    return {mid: frame for (mid,), frame in
            rows.partition_by("mission_id", as_dict=True).items()}


def _outside_pool(engine: MatchingEngine, m: dict, pool: pl.DataFrame) -> list[str]:
    """Candidates eligible on the week's snapshot but not in the truth's pool.

    The truth's pool is who was eligible at the mission's first shortlist; a candidate the
    week's snapshot finds eligible but the pool lacks took another mission during the week
    (a hold the snapshot cannot see yet). They are excluded as the hard rules at serving
    time would, so that the policy's true value counts no candidate the truth cannot score.
    """
    eligibility = engine.eligible(m)
    found = set(engine.snapshot.person_ids[eligibility.person_idx].tolist())
    found |= set(eligibility.group_ids)
    known = set(pool["person_id"].drop_nulls().to_list()) | set(
        pool["group_id"].drop_nulls().to_list())
    return sorted(found - known)


def _truth_rows(engine: MatchingEngine, m: dict, pool: pl.DataFrame) -> pl.DataFrame:
    """Features and model scores of every truth candidate of a mission, as of its week."""
    snap: CommunitySnapshot = engine.snapshot
    persons = [p for p in pool["person_id"].drop_nulls().to_list() if p in snap.person_index]
    groups = [g for g in pool["group_id"].drop_nulls().to_list() if g in snap.group_members]
    if not persons and not groups:
        return pl.DataFrame()
    feats = build_features(engine.feature_model, snap, m, persons, groups)
    feats = feats.with_columns(
        pl.Series("p_model", np.asarray(engine.ranker.predict_proba(feats), dtype=float)),
        pl.Series("engine", ranking_score(engine.ranker, feats)))
    p_true = pool.select(pl.coalesce("person_id", "group_id").alias("candidate_id"),
                         "p_success")
    return feats.join(p_true, on="candidate_id").with_columns(
        pl.lit(m["mission_id"]).alias("mission_id"))


def _truth_view(rows: pl.DataFrame, policy: pl.DataFrame, k: int, seed: int,
                config: ShortlistConfig) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    rows = rows.with_columns(
        pl.Series("random", rng.random(rows.height)),
        *[fn(rows).alias(name) for name, fn in BASELINES.items() if fn is not None],
    )
    rankers = {"engine": "engine", "oracle": "p_success", **{b: b for b in BASELINES}}
    out: dict[str, Any] = {"missions": rows["mission_id"].n_unique(), "candidates": rows.height}
    for name, col in rankers.items():
        out[name] = truth_metrics(rows, col, k)
    eng, orc = out["engine"]["expected_successes_at_k"], out["oracle"]["expected_successes_at_k"]
    best = max(out[b]["expected_successes_at_k"] for b in BASELINES)
    out["engine_over_oracle"] = eng / orc if orc else None
    out["engine_over_best_baseline"] = eng / best if best else None
    out["oracle_over_random"] = orc / out["random"]["expected_successes_at_k"]
    # True value of the new policy: its offer probabilities times the true p_success.
    joined = policy.join(rows.select("mission_id", "candidate_id", "p_success"),
                         on=["mission_id", "candidate_id"], how="inner", suffix="_true")
    if joined.height:
        per = joined.group_by("mission_id").agg(
            (pl.col("propensity") * pl.col("p_success_true")).sum().alias("v"),
            pl.col("propensity").sum().alias("w"))
        out["policy_true_expected_successes"] = float(per["v"].mean())
        out["policy_true_success_rate"] = float(per["v"].sum() / per["w"].sum())
    seg = _segments_truth(rows, config)
    out["segments"] = {
        "experience": by_segment(seg, "experience", lambda f: _seg_truth(f, k), MIN_CELL),
    }
    return out


def _segments_truth(rows: pl.DataFrame, config: ShortlistConfig) -> pl.DataFrame:
    return rows.with_columns(
        pl.when(pl.col("kind") == "group").then(pl.lit("group"))
        .when(pl.col("n_outcomes") < config.newcomer_outcomes).then(pl.lit("newcomer"))
        .otherwise(pl.lit("established")).alias("experience"),
        pl.col("candidate_id").alias("person_id"))


def _seg_truth(frame: pl.DataFrame, k: int) -> dict[str, Any]:
    y = frame["p_success"].to_numpy()
    p = frame["p_model"].to_numpy()
    return {"n": frame.height, "mean_true_p": float(y.mean()),
            "mean_predicted": float(p.mean()),
            "corr": float(np.corrcoef(y, p)[0, 1]) if frame.height > 2 else None}


def truth_metrics(rows: pl.DataFrame, score_col: str, k: int = 10) -> dict[str, float | None]:
    """Expected successes in the top ``k`` and NDCG@k (gains: true ``p_success``) of the
    ranking of each mission's candidates by ``score_col`` (ties: candidate id), averaged over
    missions. ``rows`` as :func:`truth_candidates` gives them."""
    return {"expected_successes_at_k": expected_successes_at_k(
                rows, "mission_id", score_col, "p_success", k, id_col="candidate_id"),
            "ndcg_at_k": _graded_ndcg(rows, score_col, k)}


def _graded_ndcg(rows: pl.DataFrame, score_col: str, k: int) -> float | None:
    vals = []
    for (_,), grp in rows.group_by("mission_id"):
        order = grp.sort([score_col, "candidate_id"], descending=[True, False])
        gains = order["p_success"].to_numpy()
        v = ndcg_at_k(gains, k)
        if v is not None:
            vals.append(v)
    return float(np.mean(vals)) if vals else None


def _off_policy(frames: CommunityFrames, held: pl.DataFrame, policy: pl.DataFrame,
                model: EngineModel, rows: pl.DataFrame, seed: int) -> dict[str, Any]:
    """IPS/SNIPS/DR of the new policy from the held-out missions' logged offers.

    Rows are the logged offers with a result (taken up, outcome verified), each logged with
    probability ``propensity x uptake`` (see the module's docstring).
    """
    held_ids = held["mission_id"].implode()
    out_ok = frames.verified_outcomes().group_by("assignment_id").agg(
        pl.col("success").any().alias("r"))
    offers = (frames.assignments.filter(pl.col("mission_id").is_in(held_ids))
              .join(out_ok, on="assignment_id", how="left")
              .with_columns(pl.col("r").is_not_null().alias("has_result"),
                            pl.col("r").fill_null(False).cast(pl.Float64),
                            pl.coalesce("person_id", "group_id").alias("candidate_id")))
    # Picks made by hand (no shortlist) or history from before the engine: no propensity.
    usable_offer = pl.col("propensity").is_not_null() & pl.col("shortlist_id").is_not_null()
    n_without = int(offers.filter(~usable_offer).height)
    with_propensity = offers.filter(usable_offer)
    res: dict[str, Any] = {"rows_without_propensity": n_without,
                           "offers": with_propensity.height}
    if with_propensity.height == 0:
        res["rows_used"] = 0
        return res
    uptake = float(with_propensity["has_result"].mean())
    res["uptake"] = uptake
    usable = with_propensity.filter(pl.col("has_result"))
    # Missions whose offers all went without a result still count as served queries.
    logged_missions = usable["mission_id"].unique()
    joined = usable.join(policy.select("mission_id", "candidate_id", "propensity", "p_success")
                         .rename({"propensity": "p_new", "p_success": "rhat"}),
                         on=["mission_id", "candidate_id"], how="left").with_columns(
        pl.col("p_new").fill_null(0.0), pl.col("rhat").fill_null(0.0),
        (pl.col("propensity") * uptake).alias("p_logged"))
    served = pl.concat([policy["mission_id"].unique(),
                        with_propensity["mission_id"].unique()]).unique()
    unlogged = served.filter(~served.is_in(logged_missions.implode()))
    r, p_log, p_new = (joined["r"].to_numpy(), joined["p_logged"].to_numpy(),
                       joined["p_new"].to_numpy())
    q = joined["mission_id"].to_numpy()
    res["rows_used"] = joined.height
    if joined.height == 0:
        return res
    # Studentised bootstrap over missions: a few large weights carry the estimate (effective
    # sample size of tens among ~1,000 rows), where the normal interval misses on one side.
    ci = {"ci": "bootstrap-t", "n_boot": 2000, "seed": seed}
    res["ips"] = ips(r, p_log, p_new, query=q, n_queries_unlogged=len(unlogged), **ci).to_dict()
    slate = float(policy.group_by("mission_id").agg(pl.col("propensity").sum())
                  ["propensity"].mean())
    res["snips"] = snips(r, p_log, p_new, query=q, slate_size=1.0,
                         n_queries_unlogged=len(unlogged), **ci).to_dict()
    res["snips"]["note"] = "success rate per offer (weights self-normalised)"
    # DR's reward model: the engine's probability, recalibrated on the held-out logged
    # outcomes (cross-fitted by mission). A model fitted before T can be off after it (its
    # base rate drifts), and with few effective rows the IPS correction cannot undo that.
    has_model = p_new > 0  # rows the policy scored (its propensities are floored above 0)
    rhat = joined["rhat"].to_numpy().copy()
    fitted, policy_p = crossfit_recalibration(
        r[has_model], rhat[has_model], q[has_model], policy["p_success"].to_numpy(),
        policy["mission_id"].to_numpy(), seed=seed)
    rhat[has_model] = fitted
    policy = policy.with_columns(pl.Series("p_success", policy_p))
    dm = (policy.with_columns((pl.col("propensity") * pl.col("p_success")).alias("dm"))
          .group_by("mission_id").agg(pl.col("dm").sum()))
    dm_map = dict(dm.iter_rows())
    per_query_dm = np.array([dm_map.get(x, 0.0) for x in np.unique(q)])
    # DR's direct-method term per logged query; order must follow the estimator's query codes.
    res["dr"] = doubly_robust(
        r, p_log, p_new, rhat,
        np.array([dm_map.get(x, 0.0) for x in q]), query=q,
        unlogged_direct_method=[dm_map.get(x, 0.0) for x in unlogged.to_list()],
        **ci).to_dict()
    res["policy_offers_per_mission"] = slate
    # Self-check of the propensities: with right ones (and the policy's offers within the
    # logging policy's reach) the weights of a mission sum to its offers in expectation.
    res["weight_sum_per_mission"] = float((p_new / p_log).sum() / (len(np.unique(q))
                                                                   + len(unlogged)))
    res["direct_method_mean"] = float(per_query_dm.mean()) if len(per_query_dm) else None
    return res
