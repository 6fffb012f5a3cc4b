"""Pinned feature values on the tiny hand-made city of conftest.py (decision time T)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import polars as pl
import pytest
from scipy.special import expit, logit
from sklearn.exceptions import NotFittedError
from support.tiny_city import T, d, populate_tiny_city

from features import (
    FEATURE_NAMES,
    FEATURES,
    CommunitySnapshot,
    FeatureModel,
    MissionSpec,
    build_features,
    le_weight,
    load_le_prior,
)
from features._model import LE_LOGIT_SCALE
from graph._frames import load_frames

TARGET = MissionSpec(
    mission_id="M9", need_type="school_absenteeism", area_id="A1",
    title="Halve absenteeism in the school",
    description="Tutoring and mediation with the families of absent pupils",
    minutes_per_day=60, days_per_week=2, team_min=1, team_max=2,
)


@pytest.fixture
def tiny_city(sqlite_store):
    populate_tiny_city(sqlite_store)
    return sqlite_store


@pytest.fixture
def fitted(tiny_city):
    frames = load_frames(tiny_city)
    model = FeatureModel().fit(frames, T)
    snap = CommunitySnapshot.build(frames, model, T)
    return frames, model, snap


def rows(frame: pl.DataFrame) -> dict[str, dict[str, float]]:
    return {r["candidate_id"]: r for r in frame.iter_rows(named=True)}


def test_learned_parts_use_only_the_past(fitted):
    _, model, _ = fitted
    f = model.fitted_
    # Results before T: P1 won M1, lost M2; P2 won M3. P3's win is measured after T and the
    # group's outcome is only claimed.
    assert f.p_global == pytest.approx(2 / 3)
    assert f.p_need["school_absenteeism"] == pytest.approx((1 + 10 * 2 / 3) / (2 + 10))
    assert f.p_need["drug_outreach"] == pytest.approx((1 + 10 * 2 / 3) / (1 + 10))
    assert f.prior_strength == 5.0  # too few persons for a moment estimate


def test_track_record_and_history(fitted):
    _, model, snap = fitted
    out = rows(build_features(model, snap, TARGET, ["P1", "P2", "P3", "P4"]))
    k, p = 5.0, 2 / 3
    p_need = model.fitted_.p_need["school_absenteeism"]
    assert out["P1"]["n_outcomes"] == 2
    assert out["P1"]["tr_rate"] == pytest.approx((1 + k * p) / (2 + k))
    assert out["P1"]["tr_rate_need"] == pytest.approx((1 + k * p_need) / (2 + k))
    assert out["P2"]["tr_rate_need"] == pytest.approx(p_need)  # no history on this need
    assert out["P2"]["tr_rate"] == pytest.approx((1 + k * p) / (1 + k))
    assert out["P1"]["days_since_last"] == pytest.approx((T - d(2025, 4, 20)).days)
    decay1 = 0.5 ** ((T - d(2025, 3, 20)).days / 180)
    decay2 = 0.5 ** ((T - d(2025, 4, 20)).days / 180)
    assert out["P1"]["tr_recent"] == pytest.approx((decay1 + k * p) / (decay1 + decay2 + k))
    # Newcomer and empty history: the prior mean, 3650 days.
    assert out["P3"]["n_outcomes"] == 0
    assert out["P3"]["tr_rate"] == pytest.approx(p)
    assert out["P4"]["days_since_last"] == 3650


def test_lived_experience_fit_and_consent(fitted):
    _, model, snap = fitted
    out = rows(build_features(model, snap, TARGET, ["P1", "P2", "P3", "P4"]))
    # P1 (large_family): prior 0.8, moved by one penalised Newton step on its 2 results (a win
    # and a loss); no consented person without a relevant tag has a result on this need, so
    # the baseline is the need's rate.
    p_need = model.fitted_.p_need["school_absenteeism"]
    p_hat = expit(logit(p_need) + LE_LOGIT_SCALE * 0.8)
    posterior = 0.8 + (1 - 2 * p_hat) / (LE_LOGIT_SCALE * (2 * p_hat * (1 - p_hat) + 100 / 4))
    assert out["P1"]["le_weight"] == pytest.approx((1 - 2 / 5) ** 2)
    assert out["P1"]["le_fit"] == pytest.approx(0.36 * posterior)
    # P4 (single_parent, no outcome): the documented prior, full weight.
    assert out["P4"]["le_fit"] == pytest.approx(0.4)
    # P2 (drug_use): no affinity with school absenteeism. P3 gave no consent: nothing.
    assert out["P2"]["le_fit"] == 0
    assert out["P3"]["le_fit"] == 0


def test_logistics(fitted):
    _, model, snap = fitted
    out = rows(build_features(model, snap, TARGET, ["P1", "P3", "P4"]))
    assert out["P1"]["distance_km"] == 0 and out["P1"]["same_area"] == 1
    assert out["P3"]["distance_km"] == pytest.approx(1.331, abs=1e-3)
    assert out["P4"]["distance_km"] == pytest.approx(6.654, abs=1e-3)
    assert out["P3"]["availability_ratio"] == pytest.approx(90 / 120)
    # The group's mission M4 is still running at T: P1 carries one of two assignments.
    assert out["P1"]["load"] == pytest.approx(0.5)
    assert out["P4"]["tenure_days"] == (T - d(2025, 5, 1)).days


def test_ties_and_group(fitted):
    _, model, snap = fitted
    out = rows(build_features(model, snap, TARGET, ["P1", "P2", "P3", "P4"], ["G1"]))
    # Successful on school absenteeism before T: P1 only. Ties: P1-P2 0.8, P1-P4 0.5.
    assert out["P2"]["ties_succeeded"] == 1 and out["P2"]["ties_succeeded_w"] == 0.8
    assert out["P4"]["ties_succeeded"] == 1 and out["P4"]["ties_succeeded_w"] == 0.5
    assert out["P1"]["ties_succeeded"] == 0
    # The P2-P3 tie is created after T: it does not exist yet.
    assert out["P3"]["group_reach"] == 0
    g = out["G1"]
    assert g["is_group"] == 1 and g["team_size"] == 2 and g["team_fit"] == 1
    assert g["group_cohesion"] == pytest.approx(0.8)
    assert g["group_reach"] == 1  # P4, known by P1; P1 and P2 are members
    assert g["n_outcomes"] == 3
    assert g["le_fit"] == pytest.approx(out["P1"]["le_fit"])


def test_le_table_moves_only_cells_with_outcomes(fitted):
    _, model, _ = fitted
    prior = load_le_prior()
    table = model.fitted_.le_table
    moved = {k for k in table if table[k] != prior.get(k, 0.0)}
    # consented results: P1 on school_absenteeism (large_family), P2 on drug_outreach
    assert moved == {("large_family", "school_absenteeism"), ("drug_use", "drug_outreach")}
    assert table["drug_use", "drug_outreach"] > prior["drug_use", "drug_outreach"]  # a win


def test_declared_skill_fit(fitted):
    """Ridge of the residuals on declared skills: per family (towards 0, a penalty of 100
    results), then per need (towards the family's, 400)."""
    _, model, snap = fitted
    out = rows(build_features(model, snap, TARGET, ["P1", "P2", "P3", "P4"], ["G1"]))
    p = model.fitted_.p_need["school_absenteeism"]
    # Education results: P1 (mediation, teaching) won and lost on school_absenteeism.
    # Both skills always go together: each gets half of the ridge solution.
    fam = (1 - 2 * p) / (100 + 2 + 2)
    need = ((1 - 2 * p) + 400 * fam) / (400 + 2 + 2)
    assert out["P4"]["skill_fit"] == pytest.approx(need)  # teaching
    assert out["P1"]["skill_fit"] == pytest.approx(2 * need)  # teaching + mediation
    lift = model.skill_lift_matrix()[:, model.fitted_.need_index["homework_support"]]
    assert lift[model.skill_names.index("teaching")] == pytest.approx(fam)  # no result there
    # Outreach and consulting were never seen on education missions.
    assert out["P2"]["skill_fit"] == 0 and out["P3"]["skill_fit"] == 0
    assert out["G1"]["skill_fit"] == max(out["P1"]["skill_fit"], out["P2"]["skill_fit"])


def test_tables_before_the_cutoff_learn_only_from_earlier_results(fitted):
    """A snapshot older than the model's cut-off (a training row's) refits the learned tables
    on the results known then: on 2025-04-01 only P1's win of 2025-03-20 is."""
    frames, model, _ = fitted
    early = CommunitySnapshot.build(frames, model, d(2025, 4, 1))
    out = rows(build_features(model, early, TARGET, ["P1", "P2"]))
    r = 1 - model.fitted_.p_need["school_absenteeism"]
    fam = r / (100 + 1 + 1)  # teaching and mediation, always together, share the lift
    assert out["P1"]["skill_fit"] == pytest.approx(2 * (r + 400 * fam) / (400 + 1 + 1))
    assert out["P1"]["skill_fit"] > 0 > rows(build_features(model, CommunitySnapshot.build(
        frames, model, T), TARGET, ["P1"]))["P1"]["skill_fit"]
    assert early.le_table["large_family", "school_absenteeism"] > 0.8  # one win so far
    assert model.fitted_.le_table["large_family", "school_absenteeism"] < 0.8  # win and loss
    at_cutoff = CommunitySnapshot.build(frames, model, T)
    assert at_cutoff.le_table is None and at_cutoff.skill_lift is None  # the model's own


def test_latent_skill_transfers_by_what_needs_share(fitted):
    """With too few pairs of results the variance components are the defaults (0.01 each):
    a need's lift has variance 0.03, shares 0.02 with its family and 0.01 with any need."""
    _, model, snap = fitted
    f = model.fitted_
    assert f.skill_variance == pytest.approx((0.01, 0.01, 0.01))
    assert f.need_family["school_absenteeism"] != f.need_family["drug_outreach"]
    out = rows(build_features(model, snap, TARGET, ["P1", "P2", "P3", "P4"]))
    p = f.p_need["school_absenteeism"]
    # P1: two results on this very need, measured against the rate plus their skill fit.
    resid = 0.5 - p - out["P1"]["skill_fit"]
    assert out["P1"]["skill_latent"] == pytest.approx(0.03 / (0.03 + p * (1 - p) / 2) * resid)
    # P2: one win on drug outreach (another family) moves this need by the general part only.
    q = f.p_need["drug_outreach"]
    off = model.skill_lift_matrix()[model.skill_names.index("outreach"),
                                    f.need_index["drug_outreach"]]
    assert off == pytest.approx(((1 - q) + 400 * (1 - q) / 101) / 401)
    assert out["P2"]["skill_latent"] == pytest.approx(0.01 / (0.03 + q * (1 - q)) * (1 - q - off))
    # No outcome, no latent skill: P3's win is measured after T, P4 has none.
    assert out["P3"]["skill_latent"] == 0 and out["P4"]["skill_latent"] == 0


def test_text_fit(fitted):
    _, model, snap = fitted
    out = rows(build_features(model, snap, TARGET, ["P1", "P2"]))
    assert out["P1"]["text_fit"] > 0.1  # "tutoring", "mediation" in the text and skills
    assert out["P2"]["text_fit"] == 0


def test_frame_shape_and_registry(fitted):
    _, model, snap = fitted
    frame = build_features(model, snap, TARGET, ["P1"], ["G1"])
    assert frame.columns == ["kind", "candidate_id", *FEATURE_NAMES]
    assert {f.name for f in FEATURES} == set(FEATURE_NAMES)
    assert all(f.meaning and f.unit and f.family for f in FEATURES)
    assert {f.name for f in FEATURES if f.special_category} == {
        "le_fit", "le_weight", "proximity_le"}
    empty = build_features(model, snap, TARGET)
    assert empty.height == 0 and empty.columns == frame.columns


def test_unknown_or_future_candidates_are_refused(fitted):
    _, model, snap = fitted
    with pytest.raises(KeyError, match="P5"):
        build_features(model, snap, TARGET, ["P5"])  # joins after T


def test_not_fitted():
    with pytest.raises(NotFittedError):
        FeatureModel().le_affinity(["drug_use"], "drug_outreach")


def test_model_round_trips_as_json(fitted):
    import json

    frames, model, snap = fitted
    again = FeatureModel.from_dict(json.loads(json.dumps(model.to_dict())))
    a = build_features(model, snap, TARGET, ["P1", "P2", "P4"], ["G1"])
    b = build_features(again, CommunitySnapshot.build(frames, again, T), TARGET,
                       ["P1", "P2", "P4"], ["G1"])
    assert a.equals(b)


def test_fading_prior_after_five_outcomes():
    assert le_weight(0) == 1 and le_weight(5) == 0 and le_weight(9) == 0
    assert 0 < le_weight(2) < le_weight(1) < 1


def test_changing_tags_of_a_proven_person_moves_nothing(fitted):
    """Five verified outcomes: their tags no longer move any feature (epsilon = 0)."""
    frames, model, snap = fitted
    snap5 = replace(snap, n_outcomes=snap.n_outcomes.copy())
    snap5.n_outcomes[snap.person_index["P1"]] = 5
    before = build_features(model, snap5, TARGET, ["P1"])
    tags = list(snap5.le_tags)
    tags[snap.person_index["P1"]] = ["large_family", "single_parent", "school_dropout"]
    after = build_features(model, replace(snap5, le_tags=tags), TARGET, ["P1"])
    assert np.allclose(before.drop("kind", "candidate_id").to_numpy(),
                       after.drop("kind", "candidate_id").to_numpy(), atol=0)


def test_point_in_time_later_events_change_nothing(tiny_city):
    """Every history-based feature at T is the same with or without events after T."""
    frames = load_frames(tiny_city)
    model = FeatureModel().fit(frames, T)
    before = build_features(model, CommunitySnapshot.build(frames, model, T), TARGET,
                            ["P1", "P2", "P3", "P4"], ["G1"])
    from graph import GroupMember, Outcome, Tie, VettingRecord

    with tiny_city.session() as s:
        s.add(Tie(person_a="P3", person_b="P4", kind="peer", weight=1.0,
                  created_at=d(2025, 8, 2)))
        s.add(GroupMember(group_id="G1", person_id="P4", joined_at=d(2025, 8, 3)))
        s.add(Outcome(outcome_id="O9", assignment_id="AS4", measured_at=d(2025, 8, 1),
                      value=0.09, success=True, status="verified", payout=0.0))
        s.add(VettingRecord(person_id="P4", regime="minors", status="valid",
                            valid_from=d(2025, 8, 5), expires_at=None, reference="x"))
    later = load_frames(tiny_city)
    after = build_features(model, CommunitySnapshot.build(later, model, T), TARGET,
                           ["P1", "P2", "P3", "P4"], ["G1"])
    assert before.equals(after)
    # ... and the same events do count once they are in the past.
    moved = build_features(model, CommunitySnapshot.build(later, model, d(2025, 8, 10)), TARGET,
                           ["P3", "P4"], ["G1"])
    assert not before.filter(pl.col("candidate_id").is_in(["P3", "P4", "G1"])).equals(moved)


def test_graph_proximity_features(tiny_city):
    from features import attach_graph
    from graph import community_graph_from_frames

    frames = load_frames(tiny_city)
    model = FeatureModel().fit(frames, T)
    graph = community_graph_from_frames(frames)
    snap = attach_graph(CommunitySnapshot.build(frames, model, T), graph)
    out = rows(build_features(model, snap, TARGET, ["P1", "P2", "P3", "P4"], ["G1"]))
    # Residents of the mission's area and people with past missions there are closest.
    assert out["P1"]["proximity"] > out["P3"]["proximity"] > 0
    assert out["P1"]["proximity"] > out["P4"]["proximity"] > 0
    assert out["G1"]["proximity"] == pytest.approx(out["P1"]["proximity"]
                                                   + out["P2"]["proximity"])
    # proximity_le goes through lived-experience edges and fades like le_fit: P4
    # (single_parent, linked to school_absenteeism, no outcome) gains from it; P3 gave no
    # consent and gets exactly what the plain graph gives after the fade.
    assert out["P4"]["proximity_le"] > 0
    drug = MissionSpec(mission_id="M8", need_type="drug_outreach", area_id="A3")
    d_out = rows(build_features(model, snap, drug, ["P1", "P2"]))
    assert d_out["P2"]["proximity_le"] / 0.64 > d_out["P2"]["proximity"]


def test_graph_is_cut_at_the_snapshot_time(tiny_city):
    from features import attach_graph
    from graph import community_graph_from_frames

    frames = load_frames(tiny_city)
    model = FeatureModel().fit(frames, T)
    graph = community_graph_from_frames(frames)  # holds the tie P2-P3 of 2025-09-01
    snap = attach_graph(CommunitySnapshot.build(frames, model, T), graph)
    at_t = community_graph_from_frames(frames.as_of(T))
    snap_t = attach_graph(CommunitySnapshot.build(frames, model, T), at_t)
    a = build_features(model, snap, TARGET, ["P1", "P2", "P3", "P4"])
    b = build_features(model, snap_t, TARGET, ["P1", "P2", "P3", "P4"])
    assert np.allclose(a["proximity"].to_numpy(), b["proximity"].to_numpy(), rtol=1e-5)
