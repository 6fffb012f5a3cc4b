"""The one-pass feature build against the per-candidate reference it replaced.

``build_features`` featurises persons and every peer group's members in one vectorised pass.
The reference below is the earlier implementation (one feature call per group, a loop over
groups, full-length arrays per call), kept here only to check that the values did not move:
equal up to float rounding (``rtol=1e-9``), on the tiny city and on a simulated community
of 2,000 persons with many groups.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from support.matching_fixtures import simulated
from support.tiny_city import T, populate_tiny_city

from features import (
    FEATURE_NAMES,
    CommunitySnapshot,
    FeatureModel,
    MissionSpec,
    attach_graph,
    build_features,
    graph_signals,
    le_weight,
)
from graph import community_graph_from_frames, mission_seeds, personalized_pagerank
from graph._frames import load_frames

# ------------------------------------------------------------------ the reference (before)


def _ref_person_features(model, snap, m, idx, signals):  # noqa: ANN001, ANN202
    f = model._check()
    k = f.prior_strength
    p_global = f.p_global
    j = f.need_index.get(m.need_type)
    p_need = f.p_need.get(m.need_type, p_global)
    family = f.need_family.get(m.need_type, m.need_type)
    fam_cols = [f.need_index[x] for x, fam in f.need_family.items() if fam == family]

    n_out = snap.n_outcomes[idx]
    w_le = le_weight(n_out)
    table = f.le_table if snap.le_table is None else snap.le_table
    affinity = np.array([max((table.get((t, m.need_type), 0.0) for t in snap.le_tags[i]),
                             default=0.0) for i in idx])
    if j is None:
        need_n = need_s = np.zeros(len(idx))
        skill = skill_fit = np.zeros(len(idx))
    else:
        need_n, need_s = snap.need_n[idx, j], snap.need_s[idx, j]
        d = f.n_factors
        skill = snap.latent[idx, :d] @ f.need_factors[j, :d]
        skill_fit = snap.latent[idx, d + j]
    fam_n = snap.need_n[idx][:, fam_cols].sum(axis=1) if fam_cols else np.zeros(len(idx))
    fam_s = snap.need_s[idx][:, fam_cols].sum(axis=1) if fam_cols else np.zeros(len(idx))
    p_fam = f.p_family.get(family, p_global)

    area = snap.area_index.get(m.area_id)
    if area is None:
        dist = np.full(len(idx), np.nan)
    else:
        dist = snap.area_distance_km[snap.person_area[idx], area]

    ties = snap.ties[idx]
    if j is None:
        succeeded = np.zeros(snap.ties.shape[0])
    else:
        succeeded = (snap.need_s[:, j] > 0).astype(float)
    ties_w = ties @ succeeded
    ties_n = (ties > 0).astype(float) @ succeeded
    reach = np.diff(ties.indptr).astype(float)
    if area is None:
        in_area = np.zeros(len(idx))
    else:
        in_area = np.log1p(ties @ (snap.person_area == area).astype(float))
    rates = (snap.res_s + k * p_global) / (snap.res_n + k)
    strength = np.asarray(ties.sum(axis=1)).ravel()
    peers_rate = np.where(strength > 0, (ties @ rates) / np.maximum(strength, 1e-12), p_global)

    n_nodes = max(1, len(snap.person_ids))
    return {
        "le_fit": w_le * affinity,
        "le_weight": w_le,
        "n_outcomes": n_out,
        "tr_rate": (snap.res_s[idx] + k * p_global) / (snap.res_n[idx] + k),
        "tr_rate_need": (need_s + k * p_need) / (need_n + k),
        "tr_rate_family": (fam_s + k * p_fam) / (fam_n + k),
        "tr_recent": (snap.recent_s[idx] + k * p_global) / (snap.recent_n[idx] + k),
        "days_since_last": snap.days_since_last[idx],
        "skill_latent": skill,
        "skill_fit": skill_fit,
        "proximity": signals["proximity"][idx] * n_nodes,
        "proximity_le": signals["proximity_le"][idx] * n_nodes * w_le,
        "ties_succeeded": ties_n,
        "ties_succeeded_w": ties_w,
        "ties_in_area": in_area,
        "peers_rate": peers_rate,
        "distance_km": dist,
        "same_area": (snap.person_area[idx] == area).astype(float) if area is not None
        else np.zeros(len(idx)),
        "availability_ratio": snap.availability[idx] / m.weekly_minutes,
        "load": snap.load[idx] / np.maximum(snap.capacity[idx], 1),
        "tenure_days": snap.tenure_days[idx],
        "text_fit": _ref_text_fit(model, snap, m, idx),
        "is_group": np.zeros(len(idx)),
        "team_size": np.ones(len(idx)),
        "team_fit": np.full(len(idx), float(m.team_min <= 1 <= m.team_max)),
        "group_cohesion": np.zeros(len(idx)),
        "group_reach": reach,
    }


def _ref_text_fit(model, snap, m, idx):  # noqa: ANN001, ANN202
    f = model._check()
    skill_tfidf = model.vectorizer.transform([f.skill_text[s] for s in snap.skill_names])
    mission_vec = model.vectorizer.transform([m.text])
    person_vecs = snap.skills[idx] @ skill_tfidf
    num = np.asarray((person_vecs @ mission_vec.T).todense()).ravel()
    norms = np.sqrt(np.asarray(person_vecs.multiply(person_vecs).sum(axis=1)).ravel())
    m_norm = np.sqrt(mission_vec.multiply(mission_vec).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((norms > 0) & (m_norm > 0), num / (norms * m_norm), 0.0)


_REF_GROUP_AGG = {
    "le_fit": np.max, "le_weight": np.mean, "n_outcomes": np.sum, "tr_rate": np.mean,
    "tr_rate_need": np.max, "tr_rate_family": np.mean, "tr_recent": np.mean,
    "days_since_last": np.min, "skill_latent": np.max, "skill_fit": np.max,
    "proximity": np.sum,
    "proximity_le": np.sum, "ties_succeeded": np.sum, "ties_succeeded_w": np.sum,
    "ties_in_area": np.max, "peers_rate": np.mean,
    "distance_km": np.max, "same_area": np.max, "availability_ratio": np.min, "load": np.max,
    "tenure_days": np.mean, "text_fit": np.max,
}


def _ref_signals(snap, graph, m):  # noqa: ANN001, ANN202
    """Proximity over every person of the snapshot, as ``attach_graph`` gave it before."""
    g = graph if graph.as_of == snap.as_of else graph.snapshot(snap.as_of)
    positions = g.person_index(snap.person_ids.tolist())
    seeds = {k: v for k, v in mission_seeds(m.area_id, m.need_type).items() if k in g.nodes}
    if not seeds:
        n = len(snap.person_ids)
        return {"proximity": np.zeros(n), "proximity_le": np.zeros(n)}
    total = sum(seeds.values())
    seeds = {k: v / total for k, v in seeds.items()}
    people = g.nodes.slice("person")
    plain = personalized_pagerank(g, seeds)[people]
    with_le = personalized_pagerank(g, seeds, lived_experience=True)[people]
    return {"proximity": np.asarray(plain, dtype=float)[positions],
            "proximity_le": np.asarray(with_le, dtype=float)[positions]}


def reference_features(model, snap, graph, mission, person_ids=(),  # noqa: ANN001
                       group_ids=()) -> pl.DataFrame:
    """The per-group implementation that the one-pass build replaced."""
    m = MissionSpec.of(mission)
    signals = _ref_signals(snap, graph, m)
    parts = []
    if len(person_ids):
        idx = np.array([snap.person_index[p] for p in person_ids], dtype=np.int64)
        feats = _ref_person_features(model, snap, m, idx, signals)
        parts.append(pl.DataFrame({"kind": ["person"] * len(idx),
                                   "candidate_id": list(person_ids), **feats}))
    if len(group_ids):
        rows = []
        for g in group_ids:
            members = snap.group_members[g]
            feats = _ref_person_features(model, snap, m, members, signals)
            row = {name: float(agg(feats[name])) for name, agg in _REF_GROUP_AGG.items()}
            size = len(members)
            sub = snap.ties[members][:, members]
            neigh = set(snap.ties[members].indices.tolist()) - set(members.tolist())
            row.update({
                "is_group": 1.0, "team_size": float(size),
                "team_fit": float(m.team_min <= size <= m.team_max),
                "group_cohesion": float(sub.sum() / max(1, size * (size - 1))),
                "group_reach": float(len(neigh)),
            })
            rows.append({"kind": "group", "candidate_id": g, **row})
        parts.append(pl.DataFrame(rows))
    out = pl.concat([p.select(["kind", "candidate_id", *FEATURE_NAMES]) for p in parts],
                    how="vertical_relaxed")
    return out.with_columns(pl.col(n).cast(pl.Float64) for n in FEATURE_NAMES)


# ------------------------------------------------------------------------------ helpers


def assert_same(new: pl.DataFrame, ref: pl.DataFrame) -> None:
    assert new.columns == ref.columns
    assert new.schema == ref.schema
    assert new["kind"].to_list() == ref["kind"].to_list()
    assert new["candidate_id"].to_list() == ref["candidate_id"].to_list()
    for name in FEATURE_NAMES:
        a, b = new[name].to_numpy(), ref[name].to_numpy()
        assert np.allclose(a, b, rtol=1e-9, atol=0, equal_nan=True), (
            name, np.flatnonzero(~np.isclose(a, b, rtol=1e-9, atol=0, equal_nan=True))[:5])


# -------------------------------------------------------------------------------- tests


@pytest.fixture
def tiny(sqlite_store):
    populate_tiny_city(sqlite_store)
    frames = load_frames(sqlite_store)
    model = FeatureModel().fit(frames, T)
    graph = community_graph_from_frames(frames)
    snap = attach_graph(CommunitySnapshot.build(frames, model, T), graph)
    return model, snap, graph


TINY_MISSIONS = [
    MissionSpec(mission_id="M9", need_type="school_absenteeism", area_id="A1",
                title="Halve absenteeism in the school",
                description="Tutoring and mediation with the families of absent pupils",
                minutes_per_day=60, days_per_week=2, team_min=1, team_max=2),
    MissionSpec(mission_id="M8", need_type="drug_outreach", area_id="A3", team_max=3),
    # Neither the need nor the area is known: the branches without history or distance.
    MissionSpec(mission_id="MX", need_type="unheard_of", area_id="nowhere", team_min=2,
                team_max=4),
]


@pytest.mark.parametrize("mission", TINY_MISSIONS, ids=lambda m: m.mission_id)
def test_tiny_city_matches_the_reference(tiny, mission):
    model, snap, graph = tiny
    persons = ["P4", "P1", "P2", "P3", "P1"]  # any order, repeats allowed
    groups = sorted(snap.group_members)
    assert groups
    assert_same(build_features(model, snap, mission, persons, groups),
                reference_features(model, snap, graph, mission, persons, groups))
    assert_same(build_features(model, snap, mission, [], groups),
                reference_features(model, snap, graph, mission, [], groups))
    assert_same(build_features(model, snap, mission, persons),
                reference_features(model, snap, graph, mission, persons))
    # The proximity arrays over the whole snapshot are still what they were.
    full, ref = graph_signals(snap, mission), _ref_signals(snap, graph, mission)
    for name in ("proximity", "proximity_le"):
        assert np.array_equal(full[name], ref[name])


@pytest.fixture(scope="module")
def community(tmp_path_factory):
    sim = simulated(tmp_path_factory.mktemp("sim2k"), n_persons=2000, n_missions=200, seed=5)
    snap = attach_graph(CommunitySnapshot.build(sim.frames, sim.feature_model, sim.cut),
                        sim.graph)
    yield sim, snap
    sim.store.dispose()


def test_simulated_community_matches_the_reference(community):
    sim, snap = community
    model = sim.feature_model
    rng = np.random.default_rng(0)
    groups = sorted(snap.group_members)
    assert len(groups) >= 100  # many groups, of every size
    assert {len(snap.group_members[g]) for g in groups} >= {2, 3, 4}
    checked = 0
    for mission in sim.held_out[:8]:
        persons = snap.person_ids[rng.choice(len(snap.person_ids), 300, replace=False)]
        chosen = [groups[i] for i in rng.choice(len(groups), 80, replace=False)]
        new = build_features(model, snap, mission, persons.tolist(), chosen)
        ref = reference_features(model, snap, sim.graph, mission, persons.tolist(), chosen)
        assert_same(new, ref)
        # The features do vary: the comparison is not between columns of zeros.
        assert new.filter(pl.col("kind") == "group")["group_cohesion"].max() > 0
        assert new["ties_succeeded"].max() > 0
        checked += 1
    assert checked == 8


def test_every_group_of_the_simulated_community(community):
    sim, snap = community
    mission = sim.held_out[0]
    groups = sorted(snap.group_members)
    assert_same(build_features(sim.feature_model, snap, mission, [], groups),
                reference_features(sim.feature_model, snap, sim.graph, mission, [], groups))


def test_text_vectors_kept_per_snapshot_follow_a_refitted_model(tiny, sqlite_store):
    model, snap, graph = tiny
    mission = TINY_MISSIONS[0]
    persons = ["P1", "P2", "P3", "P4"]
    before = build_features(model, snap, mission, persons)  # fills the snapshot's caches
    idf = model.vectorizer.idf_.copy()
    model.fit(load_frames(sqlite_store), T.replace(month=3))  # fewer texts: another idf
    assert model.vectorizer.idf_.shape != idf.shape or not np.array_equal(
        model.vectorizer.idf_, idf)
    after = build_features(model, snap, mission, persons)
    assert_same(after, reference_features(model, snap, graph, mission, persons))
    assert not np.array_equal(after["text_fit"].to_numpy(), before["text_fit"].to_numpy())
