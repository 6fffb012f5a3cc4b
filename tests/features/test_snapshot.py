"""The snapshot's tie matrix (the strongest tie of a pair over its kinds) and id lookups."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from support.tiny_city import T, d, populate_tiny_city

from features import CommunitySnapshot, FeatureModel, MissionSpec, build_features
from features._snapshot import _positions
from graph import Tie
from graph._frames import load_frames

TARGET = MissionSpec(mission_id="M9", need_type="school_absenteeism", area_id="A1",
                     team_min=1, team_max=2)


@pytest.fixture
def two_kinds(sqlite_store):
    """The tiny city where P1 and P2 are also neighbours (0.95), besides peers (0.8)."""
    populate_tiny_city(sqlite_store)
    with sqlite_store.session() as s:
        s.add(Tie(person_a="P1", person_b="P2", kind="neighbour", weight=0.95,
                  created_at=d(2024, 6, 2)))
    frames = load_frames(sqlite_store)
    model = FeatureModel().fit(frames, T)
    return frames, model, CommunitySnapshot.build(frames, model, T)


def test_a_pair_tied_in_two_kinds_weighs_its_strongest_tie(two_kinds):
    _, model, snap = two_kinds
    p1, p2, p4 = (snap.person_index[p] for p in ("P1", "P2", "P4"))
    ties = snap.ties.toarray()
    assert ties[p1, p2] == ties[p2, p1] == 0.95  # not 0.8 + 0.95
    assert ties[p1, p4] == ties[p4, p1] == 0.5
    assert (ties == ties.T).all() and ties.max() <= 1
    assert snap.ties.has_canonical_format
    out = {r["candidate_id"]: r for r in build_features(
        model, snap, TARGET, ["P1", "P2"], ["G1"]).iter_rows(named=True)}
    # P1 succeeded on this need before T: one tie, of the strongest weight.
    assert out["P2"]["ties_succeeded"] == 1 and out["P2"]["ties_succeeded_w"] == 0.95
    assert out["P1"]["group_reach"] == 2  # P2 and P4, each once
    # A weighted density stays a share in [0, 1].
    assert out["G1"]["group_cohesion"] == pytest.approx(0.95)


def test_positions_of_ids():
    ids = pl.Series(["a", "b", "c"])
    keys = pl.Series(["c", "a", "c", None, "z"])
    assert _positions(keys, ids, default=-1).tolist() == [2, 0, 2, -1, -1]
    assert _positions(keys.head(3), ids, "ties.person_a").tolist() == [2, 0, 2]
    assert _positions(pl.Series(["b"]), ids, default=-1, values=[7, 8, 9]).tolist() == [8]
    with pytest.raises(KeyError, match=r"ties\.person_b: 2 value\(s\) not found.*'z'"):
        _positions(keys, ids, "ties.person_b")


def test_empty_community_snapshot(sqlite_store):
    frames = load_frames(sqlite_store)
    model = FeatureModel().fit(frames, T)
    snap = CommunitySnapshot.build(frames, model, T)
    assert snap.ties.shape == (0, 0) and snap.group_members == {}
    assert np.asarray(snap.tenure_days).shape == (0,)
    assert build_features(model, snap, TARGET).height == 0
