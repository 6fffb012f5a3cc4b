"""The training set: which assignments make rows, their labels, the propensity they carry,
features as of the start of the assignment's week (nothing later leaks in), and a Ranker
fitting on it."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import numpy as np
import polars as pl
import pytest
from support.matching_fixtures import Community, d, simulated_fixture

import features
import graph
import matching
from features import FEATURE_NAMES
from matching import build_training_set, labelled_assignments, snapshot_time

HOUR = timedelta(hours=1)


sim = simulated_fixture("training", n_persons=600, n_missions=200, seed=41)


@pytest.fixture(scope="module")
def rows(sim) -> pl.DataFrame:
    ts = sim.training_set()
    assert ts.skipped_unknown_candidate == 0
    return ts.rows


def test_rows_are_the_assignments_with_a_verified_outcome_before_the_cutoff(sim, rows):
    out = sim.frames.outcomes
    before = out.filter((pl.col("status") == "verified") & (pl.col("measured_at") < sim.cut))
    expected = set(before["assignment_id"].to_list())
    assert set(rows["assignment_id"].to_list()) == expected
    assert rows["assignment_id"].n_unique() == rows.height
    # What was left out is there to be left out: outcomes not verified, or verified late.
    unverified = set(out.filter(pl.col("status") != "verified")["assignment_id"].to_list())
    late = set(out.filter((pl.col("status") == "verified")
                          & (pl.col("measured_at") >= sim.cut))["assignment_id"].to_list())
    assert unverified - expected and late - expected
    # Labels: any verified success before the cut-off.
    success = dict(before.group_by("assignment_id").agg(pl.col("success").any()).iter_rows())
    assert all(success[a] == label for a, label in rows.select("assignment_id", "label")
               .iter_rows())
    assert 0 < rows["label"].sum() < rows.height


def test_label_is_any_verified_success_before_the_cutoff():
    cut = d(2025, 3, 1)
    c = Community().add_area("A1", 48.85, 2.35)
    c.add_mission("M1", starts_at=d(2025, 1, 5), ends_at=d(2025, 4, 30))
    for i in range(1, 7):
        c.add_person(f"P{i}")
        c.add_assignment(f"AS{i}", "M1", person=f"P{i}", at=d(2025, 1, 3), status="active",
                         propensity=0.1 * i)
    c.add_outcome("O1", "AS1", d(2025, 2, 1), False).add_outcome("O2", "AS1", d(2025, 2, 10),
                                                                   True)
    c.add_outcome("O3", "AS2", d(2025, 2, 1), False).add_outcome("O4", "AS2", d(2025, 2, 10),
                                                                   False)
    c.add_outcome("O5", "AS3", d(2025, 3, 5), True)  # verified after the cut-off
    c.add_outcome("O6", "AS4", d(2025, 2, 1), True, status="claimed")
    c.add_outcome("O7", "AS5", d(2025, 2, 1), False).add_outcome("O8", "AS5", d(2025, 3, 5),
                                                                   True)
    c.add_outcome("O9", "AS6", d(2025, 2, 1), True, status="rejected")
    frames = c.frames()
    labelled = labelled_assignments(frames, until=cut)
    assert dict(labelled.select("assignment_id", "label").iter_rows()) == {
        "AS1": True, "AS2": False, "AS5": False}
    fm = features.FeatureModel().fit(frames, cut)
    ts = build_training_set(frames, fm, labelled)
    assert dict(ts.rows.select("assignment_id", "label").iter_rows()) == {
        "AS1": True, "AS2": False, "AS5": False}
    assert dict(ts.rows.select("assignment_id", "propensity").iter_rows()) == pytest.approx(
        {"AS1": 0.1, "AS2": 0.2, "AS5": 0.5})


def test_rows_carry_the_logged_propensity(sim, rows):
    logged = dict(sim.frames.assignments.select("assignment_id", "propensity").iter_rows())
    carried = rows.select("assignment_id", "propensity").iter_rows()
    assert all(logged[a] == p or (logged[a] is None and p is None) for a, p in carried)
    assert rows["propensity"].null_count() > 0  # hand picks stay, unusable off-policy
    assert rows["propensity"].drop_nulls().min() > 0


def test_rows_use_the_snapshot_of_the_start_of_the_week(rows):
    for at in rows["assigned_at"].to_list():
        start = snapshot_time(at)
        assert start.weekday() == 0 and start.tzinfo is not None
        assert (start.hour, start.minute, start.second) == (0, 0, 0)
        assert start <= at < start + timedelta(days=7)
    assert set(FEATURE_NAMES) <= set(rows.columns)
    for name in FEATURE_NAMES:
        assert rows[name].null_count() == 0, name
        assert not rows[name].is_nan().any(), name


def _row_with_history(sim, rows) -> dict:
    """A person's row assigned well inside its week, with successful peers on its need."""
    for r in rows.filter(pl.col("kind") == "person").sort("assigned_at", descending=True) \
            .iter_rows(named=True):
        start = snapshot_time(r["assigned_at"])
        if r["assigned_at"] - start > 2 * HOUR and start - sim.cut < timedelta(days=-30):
            return r
    raise AssertionError("no suitable row")


def _with(frames: graph.CommunityFrames, **new: list[dict]) -> graph.CommunityFrames:
    """``frames`` with rows added to some tables (schema kept)."""
    changes = {name: pl.concat([getattr(frames, name),
                                pl.DataFrame(rows_, schema=getattr(frames, name).schema)])
               for name, rows_ in new.items()}
    return replace(frames, **changes)


def test_an_outcome_or_tie_after_the_snapshot_changes_nothing_in_the_row(sim, rows):
    r = _row_with_history(sim, rows)
    start = snapshot_time(r["assigned_at"])
    person, need = r["candidate_id"], r["need_type"]
    frames = sim.frames
    # A finished mission of the same need, for a new success of this person...
    past = frames.missions.filter((pl.col("need_type") == need)
                                  & (pl.col("ends_at") < start - timedelta(days=1))
                                  & (pl.col("starts_at") > start - timedelta(days=400)))
    m = past.row(0, named=True)
    # ... and someone who already succeeded on this need, not yet tied to them.
    snap = features.CommunitySnapshot.build(frames, sim.feature_model, start)
    j = sim.feature_model.fitted_.need_index[need]
    tied = set(frames.ties.filter((pl.col("person_a") == person) | (pl.col("person_b") == person))
               .select(pl.concat_list("person_a", "person_b").explode()).to_series().to_list())
    partner = next(p for p in snap.person_ids[snap.need_s[:, j] > 0].tolist()
                   if p != person and p not in tied)
    labelled = labelled_assignments(frames, until=sim.cut).filter(
        pl.col("assignment_id") == r["assignment_id"])

    def row_given(at) -> dict:  # noqa: ANN001
        changed = _with(
            frames,
            assignments=[dict(assignment_id="AS_new", mission_id=m["mission_id"],
                              person_id=person, group_id=None, shortlist_id=None,
                              assigned_at=m["starts_at"], status="completed",
                              propensity=None)],
            outcomes=[dict(outcome_id="O_new", assignment_id="AS_new", measured_at=at,
                           value=1.0, success=True, status="verified", payout=0.0,
                           mission_id=m["mission_id"], need_type=need, person_id=person,
                           group_id=None)],
            ties=[dict(person_a=min(person, partner), person_b=max(person, partner),
                       kind="peer", weight=1.0, created_at=at)],
        )
        g = graph.community_graph_from_frames(changed)
        ts = build_training_set(changed, sim.feature_model, labelled, graph=g)
        return ts.rows.row(0, named=True)

    after, before = row_given(start + HOUR), row_given(start - HOUR)
    for name in FEATURE_NAMES:
        assert after[name] == pytest.approx(r[name], nan_ok=True, rel=1e-12, abs=1e-12), name
    assert after["label"] == r["label"]
    # The same outcome and tie an hour before the snapshot do reach the row: the test can
    # tell a leak.
    assert before["n_outcomes"] == r["n_outcomes"] + 1
    assert before["ties_succeeded"] == r["ties_succeeded"] + 1
    assert before["tr_rate"] != r["tr_rate"]


def test_a_ranker_fits_on_the_training_set(rows):
    ranker = matching.Ranker(n_threads=1).fit(rows, rows["label"], times=rows["assigned_at"])
    p = ranker.predict_proba(rows)
    assert p.shape == (rows.height,) and np.isfinite(p).all()
    assert ((p >= 0) & (p <= 1)).all()
    assert tuple(ranker.feature_names_) == FEATURE_NAMES
    assert p.std() > 0  # it learned something that tells rows apart


# ------------------------------------------------------------- newcomers of the same week

MONDAY = d(2025, 1, 6)  # the week of the assignments below starts here
AT = d(2025, 1, 9, 12)  # Thursday noon: P_new's assignment


def _newcomer_city(extra_ties: tuple[tuple[str, str, object], ...] = ()) -> Community:
    """P_old (joined long ago, succeeded on the need before), P_new who joined on Wednesday
    of the assignment's week and was assigned on Thursday, P_new2 (joined Tuesday, assigned
    Friday), a group of P_old and P_new formed on Wednesday, and P_late whose assignment
    predates their account (a row with no candidate at its time)."""
    c = Community().add_area("A1", 48.85, 2.35)
    c.add_mission("M0", created_at=d(2024, 9, 1), starts_at=d(2024, 9, 2),
                  ends_at=d(2024, 11, 30), status="closed")
    c.add_mission("M1", created_at=d(2025, 1, 2), starts_at=d(2025, 1, 6),
                  ends_at=d(2025, 2, 28), team_max=2)
    c.add_person("P_old")
    c.add_person("P_new", joined_at=d(2025, 1, 8, 10))
    c.add_person("P_new2", joined_at=d(2025, 1, 7, 9))
    c.add_person("P_late", joined_at=d(2025, 1, 9, 18))
    c.add_group("G_new", ["P_old", "P_new"], joined_at=d(2025, 1, 8, 12),
                created_at=d(2025, 1, 8, 12))
    for a, b, at in extra_ties:
        c.add_tie(a, b, created_at=at)
    c.add_assignment("AS0", "M0", person="P_old", at=d(2024, 9, 2), status="completed")
    c.add_outcome("O0", "AS0", d(2024, 11, 30), True)
    # P_old's assignment comes after the newcomers' in the week: it still reads the week's
    # start, not a snapshot taken for a newcomer
    rows = [("AS1", "P_old", None, d(2025, 1, 10, 15)), ("AS2", "P_new", None, AT),
            ("AS3", "P_new2", None, d(2025, 1, 10, 9)), ("AS4", None, "G_new", AT),
            ("AS5", "P_late", None, AT)]
    for i, (aid, person, group, at) in enumerate(rows):
        c.add_assignment(aid, "M1", person=person, group=group, at=at, status="completed")
        c.add_outcome(f"O{i + 1}", aid, d(2025, 2, 20), i % 2 == 0)
    return c


def _newcomer_rows(c: Community) -> tuple[matching.TrainingSet, graph.CommunityFrames,
                                          features.FeatureModel]:
    frames = c.frames()
    fm = features.FeatureModel().fit(frames, d(2025, 3, 1))
    g = graph.community_graph_from_frames(frames)
    ts = build_training_set(frames, fm, labelled_assignments(frames, until=d(2025, 3, 1)),
                            graph=g)
    return ts, frames, fm


def test_a_candidate_who_joined_in_the_assignments_week_is_a_row():
    ts, frames, fm = _newcomer_rows(_newcomer_city())
    rows = {r["assignment_id"]: r for r in ts.rows.iter_rows(named=True)}
    # everyone who existed when assigned is a row; P_late did not exist yet
    assert set(rows) == {"AS0", "AS1", "AS2", "AS3", "AS4"}
    assert ts.skipped_unknown_candidate == 1 and ts.newcomer_rows == 3
    # the established person reads the week's snapshot; the newcomers one inside the week,
    # at the first of their assignments' times, after they joined and never after the decision
    assert rows["AS1"]["features_as_of"] == MONDAY
    assert rows["AS2"]["features_as_of"] == AT and rows["AS4"]["features_as_of"] == AT
    assert rows["AS3"]["features_as_of"] == AT  # P_new2 existed then: the same snapshot
    joined = dict(frames.persons.select("person_id", "joined_at").iter_rows())
    for r in rows.values():
        assert r["features_as_of"] <= r["assigned_at"]
        if r["kind"] == "person":
            assert joined[r["candidate_id"]] < r["features_as_of"]
    # the newcomer's features are those of a snapshot at the assignment's time
    snap = features.attach_graph(features.CommunitySnapshot.build(frames, fm, AT),
                                 graph.community_graph_from_frames(frames))
    mission = next(m for m in frames.missions.iter_rows(named=True) if m["mission_id"] == "M1")
    expected = features.build_features(fm, snap, mission, ["P_new"], ["G_new"])
    for kind, cid, aid in (("person", "P_new", "AS2"), ("group", "G_new", "AS4")):
        e = expected.filter((pl.col("kind") == kind) & (pl.col("candidate_id") == cid)).row(
            0, named=True)
        for name in FEATURE_NAMES:
            assert rows[aid][name] == pytest.approx(e[name], nan_ok=True), (aid, name)
    assert rows["AS2"]["n_outcomes"] == 0 and rows["AS2"]["tenure_days"] < 2


def test_a_same_week_newcomers_row_sees_nothing_after_the_assignment():
    base, _, _ = _newcomer_rows(_newcomer_city())
    after, _, _ = _newcomer_rows(_newcomer_city((("P_new", "P_old", AT + HOUR),)))
    before, _, _ = _newcomer_rows(_newcomer_city((("P_new", "P_old", AT - HOUR),)))

    def row(ts: matching.TrainingSet) -> dict:
        return ts.rows.filter(pl.col("assignment_id") == "AS2").row(0, named=True)

    for name in FEATURE_NAMES:
        assert row(after)[name] == pytest.approx(row(base)[name], nan_ok=True), name
    # the same tie an hour before the decision reaches the row: the test can tell a leak
    assert row(before)["ties_succeeded"] == row(base)["ties_succeeded"] + 1
