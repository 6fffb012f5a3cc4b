"""The community graph: node index, dated edges, as-of snapshots, consent, PPR (checked
against networkx), the PPR cache, ties that succeeded, peer-group signals, version tags."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import networkx as nx
import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graph._community_graph import (
    EDGE_KINDS,
    LIVED_EXPERIENCE_NEEDS,
    SIGNALS,
    EdgeWeights,
    NodeIndex,
    _assemble,
    build_community_graph,
    group_cohesion,
    group_members,
    group_reach,
    group_signals,
    is_special_category,
    mission_seeds,
    personalized_pagerank,
    proximity,
    proximity_le,
    ties_succeeded,
)
from graph._errors import NotFoundError
from graph._models import (
    Area,
    AreaLink,
    Assignment,
    Client,
    GroupMember,
    Mission,
    Outcome,
    PeerGroup,
    Person,
    Tie,
)
from graph._store import Store
from graph._vocabulary import NEED_TYPES


def d(month: int, day: int = 1) -> datetime:
    return datetime(2024, month, day, tzinfo=UTC)


T = d(6, 15)  # the "as of" most tests look at


def _person(pid, area, joined, tags=None, consent_le=False):  # noqa: ANN001, ANN202
    return Person(person_id=pid, area_id=area, joined_at=joined, availability_min_per_week=120,
                  max_concurrent=1, skills=None, lived_experience=tags, consent_matching=True,
                  consent_lived_experience=consent_le)


def _mission(mid, need, area, created):  # noqa: ANN001, ANN202
    return Mission(
        mission_id=mid, client_id="C1", need_type=need, area_id=area, created_at=created,
        starts_at=created, ends_at=created + timedelta(days=90), status="closed", title=mid,
        description=None, metric="count", direction="increase", baseline=0.0, target=10.0,
        pay_rule="per_unit", unit_price=50.0, fee=None, contract_cap=None, team_min=1,
        team_max=3, minutes_per_day=60, days_per_week=2, vetting_regime=None, radius_km=None)


def make_community(store: Store) -> None:
    """Five persons in three areas, one group, two missions, four outcomes.

    ===========  ====  =========  ============================================
    person       area  joined     lived experience
    ===========  ====  =========  ============================================
    P1           A1    Jan 1      drug_use (consent)
    P2           A1    Jan 1      none, no consent
    P3           A2    Feb 1      homelessness (consent)
    P4           A2    Jul 1      (after T)
    P5           A3    Jan 1      none; A3 is linked to nothing
    ===========  ====  =========  ============================================

    Ties: P1-P2 peer 0.8 (Mar 1), P1-P3 family 0.5 (Mar 1), P2-P3 neighbour 1.0 (May 1),
    P3-P4 peer 0.6 (created Jun 1, but P4 joins Jul 1), P1-P2 neighbour 0.4 (Sep 1).
    Group G1 (Apr 1): P1, P2, P3. Missions M1 (drug_outreach, A1, Feb 1) and
    M2 (drug_outreach, A2, May 1). Outcomes: P3 on M1 verified success (Apr 15);
    P2 on M1 claimed success (Apr 20, not verified); P4 on M2 verified failure (Aug 1);
    G1 on M2 verified success (Sep 1).
    """
    with store.session() as s:
        s.add_all([Area(area_id=a, name=a, lat=48.8, lon=2.3) for a in ("A1", "A2", "A3")])
        s.add(AreaLink(area_a="A1", area_b="A2"))
        s.add(Client(client_id="C1", kind="city", name="City"))
        s.flush()
        s.add_all([
            _person("P1", "A1", d(1), "drug_use", True),
            _person("P2", "A1", d(1)),
            _person("P3", "A2", d(2), "homelessness", True),
            _person("P4", "A2", d(7)),
            _person("P5", "A3", d(1)),
        ])
        s.flush()
        s.add_all([
            Tie(person_a="P1", person_b="P2", kind="peer", weight=0.8, created_at=d(3)),
            Tie(person_a="P1", person_b="P3", kind="family", weight=0.5, created_at=d(3)),
            Tie(person_a="P2", person_b="P3", kind="neighbour", weight=1.0, created_at=d(5)),
            Tie(person_a="P3", person_b="P4", kind="peer", weight=0.6, created_at=d(6)),
            Tie(person_a="P1", person_b="P2", kind="neighbour", weight=0.4, created_at=d(9)),
        ])
        s.add(PeerGroup(group_id="G1", kind="peer", created_at=d(4)))
        s.flush()
        s.add_all([GroupMember(group_id="G1", person_id=p, joined_at=d(4))
                   for p in ("P1", "P2", "P3")])
        s.add_all([_mission("M1", "drug_outreach", "A1", d(2)),
                   _mission("M2", "drug_outreach", "A2", d(5))])
        s.flush()
        for aid, mid, pid, gid in (("S1", "M1", "P3", None), ("S2", "M1", "P2", None),
                                   ("S3", "M2", "P4", None), ("S4", "M2", None, "G1")):
            s.add(Assignment(assignment_id=aid, mission_id=mid, person_id=pid, group_id=gid,
                             shortlist_id=None, assigned_at=d(2), status="completed",
                             propensity=None))
        s.flush()
        for oid, aid, when, success, status in (
                ("O1", "S1", d(4, 15), True, "verified"),
                ("O2", "S2", d(4, 20), True, "claimed"),
                ("O3", "S3", d(8), False, "verified"),
                ("O4", "S4", d(9), True, "verified")):
            s.add(Outcome(outcome_id=oid, assignment_id=aid, measured_at=when, value=1.0,
                          success=success, status=status, payout=None))
        Store.bump_version(s)


@pytest.fixture
def community(sqlite_store):  # noqa: ANN001, ANN201
    make_community(sqlite_store)
    return sqlite_store


@pytest.fixture
def graph(community):  # noqa: ANN001, ANN201
    return build_community_graph(community)


def _edges(graph, kind: str) -> set[tuple[tuple[str, str], tuple[str, str]]]:  # noqa: ANN001
    keys = graph.nodes.keys()
    rows = graph.edges.filter(pl.col("kind") == kind).select("src", "dst").iter_rows()
    return {(keys[a], keys[b]) for a, b in rows}


# ------------------------------------------------------------------ building and as-of


# P1 (drug_use) and P3 (homelessness) consented: one edge per need their tag speaks to.
N_LE = len(LIVED_EXPERIENCE_NEEDS["drug_use"]) + len(LIVED_EXPERIENCE_NEEDS["homelessness"])


def test_counts_and_as_of_on_both_backends(store):
    make_community(store)
    full = build_community_graph(store)
    assert full.version == store.version() == 1
    assert full.edge_counts() == {
        "residence": 5, "membership": 3, "tie": 5, "lived_experience": N_LE, "adjacency": 1,
        "mission_area": 2, "mission_need": 2, "mission_client": 2, "outcome": 3}
    at_t = build_community_graph(store, as_of=T)
    assert at_t.as_of == T
    assert at_t.edge_counts() == {
        "residence": 4, "membership": 3, "tie": 3, "lived_experience": N_LE, "adjacency": 1,
        "mission_area": 2, "mission_need": 2, "mission_client": 2, "outcome": 1}
    # Building as of t and snapshotting a full load give the same graph.
    snap = full.snapshot(T)
    assert snap.edges.sort(["kind", "src", "dst"]).equals(at_t.edges.sort(["kind", "src", "dst"]))
    r = ties_succeeded(full, ["P1", "P2", "P3", "P4", "P5"], "drug_outreach")
    assert r["ties_succeeded"].to_list() == [2, 2, 2, 1, 0]


def test_node_index(graph):
    nodes = graph.nodes
    assert nodes.slice("person") == slice(0, 5)
    assert list(nodes.ids("person")) == ["P1", "P2", "P3", "P4", "P5"]
    assert nodes.slice("group") == slice(5, 6)
    assert list(nodes.ids("area")) == ["A1", "A2", "A3"]
    assert set(NEED_TYPES) <= set(nodes.ids("need"))
    assert list(nodes.ids("client")) == ["C1"]
    assert list(nodes.ids("mission")) == ["M1", "M2"]
    assert len(nodes) == 5 + 1 + 3 + nodes.size("need") + 1 + 2
    assert nodes.slice("mission").stop == len(nodes)
    for pos, key in enumerate(nodes.keys()):
        assert nodes[key] == pos and nodes.key(pos) == key
    assert ("person", "P9") not in nodes and ("area", "A1") in nodes
    with pytest.raises(NotFoundError):
        nodes[("person", "P9")]
    with pytest.raises(NotFoundError):
        graph.person_index(["P1", "nobody"])
    assert graph.person_index(["P3", "P1"]).tolist() == [2, 0]
    assert graph.mission("M2") == {"area_id": "A2", "need_type": "drug_outreach",
                                   "client_id": "C1"}


def test_node_index_is_sorted_and_checks_kinds():
    idx = NodeIndex({"person": ["P2", "P1"], "area": ["A1"]})
    assert idx.keys() == [("person", "P1"), ("person", "P2"), ("area", "A1")]
    with pytest.raises(ValueError):
        NodeIndex({"planet": ["X"]})


def test_edges_connect_the_right_nodes(graph):
    assert _edges(graph, "residence") == {
        (("person", p), ("area", a))
        for p, a in (("P1", "A1"), ("P2", "A1"), ("P3", "A2"), ("P4", "A2"), ("P5", "A3"))}
    assert _edges(graph, "adjacency") == {(("area", "A1"), ("area", "A2"))}
    assert _edges(graph, "outcome") == {
        (("person", "P3"), ("mission", "M1")), (("person", "P4"), ("mission", "M2")),
        (("group", "G1"), ("mission", "M2"))}
    assert _edges(graph, "mission_need") == {
        (("mission", m), ("need", "drug_outreach")) for m in ("M1", "M2")}


def test_outcome_edges_only_for_verified_outcomes_weighted_by_result(community):
    graph = build_community_graph(community)
    keys = graph.nodes.keys()
    out = {(keys[a], keys[b]): w for a, b, w in graph.edges.filter(
        pl.col("kind") == "outcome").select("src", "dst", "weight").iter_rows()}
    # P2's claimed outcome on M1 is not verified: no edge.
    assert (("person", "P2"), ("mission", "M1")) not in out
    assert out[(("person", "P3"), ("mission", "M1"))] == pytest.approx(1.0)
    assert out[(("person", "P4"), ("mission", "M2"))] == pytest.approx(0.1)
    custom = build_community_graph(community, weights=EdgeWeights(outcome_failure=0.3))
    w = custom.edges.filter(pl.col("kind") == "outcome")["weight"].sort().to_list()
    assert w == pytest.approx([0.3, 1.0, 1.0])


def test_as_of_drops_later_edges_and_isolates_later_persons(graph):
    at_t = graph.snapshot(T)
    ties = _edges(at_t, "tie")
    assert (("person", "P1"), ("person", "P2")) in ties  # the peer tie of March
    assert (("person", "P3"), ("person", "P4")) not in ties  # P4 joins in July
    assert all(row[0] != ("person", "P4") for row in _edges(at_t, "residence"))
    p4 = at_t.nodes[("person", "P4")]
    assert not at_t.present[p4] and at_t.present[at_t.nodes[("person", "P3")]]
    indptr = at_t.adjacency().indptr
    assert indptr[p4 + 1] == indptr[p4]
    # The P1-P2 neighbour tie of September is not there: one P1-P2 entry of weight 0.8.
    adj = at_t.adjacency(lived_experience=False)
    assert adj[0, 1] == pytest.approx(0.8)
    assert graph.adjacency(lived_experience=False)[0, 1] == pytest.approx(1.2)
    # Undated edges stay at any time; everything dated goes before the first date.
    early = graph.snapshot(d(1))
    assert early.edge_counts() == {**dict.fromkeys(EDGE_KINDS, 0), "adjacency": 1}
    with pytest.raises(ValueError, match="cannot be seen"):
        at_t.snapshot(d(7))
    with pytest.raises(ValueError, match="naive"):
        graph.snapshot(datetime(2024, 6, 1))  # noqa: DTZ001


def test_a_tie_created_after_t_changes_nothing_at_t(community):
    before = build_community_graph(community, as_of=T)
    x_before = personalized_pagerank(before, mission_seeds("A1", "drug_outreach"))
    s_before = ties_succeeded(before, ["P1", "P2", "P5"], "drug_outreach")
    with community.session() as s:
        s.add(Tie(person_a="P1", person_b="P5", kind="peer", weight=1.0, created_at=d(7)))
        Store.bump_version(s)
    after = build_community_graph(community, as_of=T)
    assert after.version == before.version + 1
    assert after.edges.height == before.edges.height
    np.testing.assert_allclose(
        personalized_pagerank(after, mission_seeds("A1", "drug_outreach")), x_before,
        rtol=1e-6, atol=1e-9)
    assert ties_succeeded(after, ["P1", "P2", "P5"], "drug_outreach").equals(s_before)
    assert build_community_graph(community).edge_counts()["tie"] == 6


def test_lived_experience_edges_need_consent(graph):
    le = _edges(graph, "lived_experience")
    assert {p for p, _ in le} == {("person", "P1"), ("person", "P3")}
    assert {n[1] for p, n in le if p == ("person", "P1")} == set(LIVED_EXPERIENCE_NEEDS["drug_use"])
    # The store refuses tags without consent; the graph refuses them too, on its own.
    tables = _tables(persons=[("P1", "A1", "drug_use", False), ("P2", "A1", "drug_use", True)])
    g = _assemble(tables, 0, EdgeWeights(), LIVED_EXPERIENCE_NEEDS)
    assert {p for p, _ in _edges(g, "lived_experience")} == {("person", "P2")}
    # A tag that names a need type links to it; an unmapped tag links to nothing.
    tables = _tables(persons=[("P1", "A1", "job_search;unknown_tag", True)])
    g = _assemble(tables, 0, EdgeWeights(), {})
    assert _edges(g, "lived_experience") == {(("person", "P1"), ("need", "job_search"))}


def _tables(persons, ties=(), groups=()):  # noqa: ANN001, ANN202
    """Loaded tables for `_assemble`, without a store (all dated Jan 1).

    ``groups`` is a sequence of (group_id, [person_id, ...]).
    """
    def frame(rows, schema):  # noqa: ANN001, ANN202
        return pl.DataFrame(rows, schema=schema, orient="row")
    t0 = d(1)
    time = pl.Datetime("us", "UTC")
    areas = sorted({p[1] for p in persons})
    return {
        "areas": frame([(a,) for a in areas], {"area_id": pl.String}),
        "links": frame([], {"area_a": pl.String, "area_b": pl.String}),
        "persons": frame([(p, a, t0, tags, c, True) for p, a, tags, c in persons],
                         {"person_id": pl.String, "area_id": pl.String, "joined_at": time,
                          "lived_experience": pl.String, "consent_lived_experience": pl.Boolean,
                          "consent_matching": pl.Boolean}),
        "ties": frame([(a, b, w, t0) for a, b, w in ties],
                      {"person_a": pl.String, "person_b": pl.String, "weight": pl.Float64,
                       "created_at": time}),
        "groups": frame([(g, t0) for g, _ in groups],
                        {"group_id": pl.String, "created_at": time}),
        "members": frame([(g, p, t0) for g, ms in groups for p in ms],
                         {"group_id": pl.String, "person_id": pl.String, "joined_at": time}),
        "clients": frame([], {"client_id": pl.String}),
        "missions": frame([], {"mission_id": pl.String, "client_id": pl.String,
                               "need_type": pl.String, "area_id": pl.String,
                               "created_at": time}),
        "needs": frame([], {"value": pl.String}),
        "outcomes": frame([], {"person_id": pl.String, "group_id": pl.String,
                               "mission_id": pl.String, "measured_at": time,
                               "success": pl.Boolean}),
    }


def test_version_tag_and_staleness(community):
    graph = build_community_graph(community)
    assert graph.version == 1 and not graph.is_stale(community)
    assert graph.snapshot(T).version == 1
    with community.session() as s:
        Store.bump_version(s)
    assert graph.is_stale(community)
    assert build_community_graph(community).version == 2


def test_empty_store(sqlite_store):
    graph = build_community_graph(sqlite_store)
    assert graph.nodes.size("person") == 0 and graph.edges.height == 0
    x = personalized_pagerank(graph, [("need", "drug_outreach")])
    assert x.sum() == pytest.approx(1.0) and x[graph.nodes[("need", "drug_outreach")]] == 1.0
    assert group_signals(graph).height == 0


# ----------------------------------------------------------------------------- PPR


def _nx_ppr(graph, seeds, lived_experience):  # noqa: ANN001, ANN202
    g = graph.to_networkx(lived_experience=lived_experience)
    ref = nx.pagerank(g, alpha=0.85, personalization=seeds, weight="weight", tol=1e-13,
                      max_iter=10_000)
    return np.array([ref[k] for k in graph.nodes.keys()])


@pytest.mark.parametrize("lived_experience", [False, True])
@pytest.mark.parametrize("when", [None, T])
def test_ppr_matches_networkx(graph, lived_experience, when):
    g = graph if when is None else graph.snapshot(when)
    for seeds in (mission_seeds("A1", "drug_outreach"), mission_seeds("A2", "rent_arrears"),
                  {("person", "P3"): 1.0}):
        x = personalized_pagerank(g, seeds, lived_experience=lived_experience, tol=1e-6)
        assert x.dtype == np.float32 and x.shape == (len(g.nodes),)
        assert x.sum() == pytest.approx(1.0, abs=1e-6) and (x >= 0).all()
        np.testing.assert_allclose(x, _nx_ppr(g, seeds, lived_experience), atol=2e-6)


def test_ppr_default_tolerance_is_close_to_networkx(graph):
    seeds = mission_seeds("A2", "drug_outreach")
    x = personalized_pagerank(graph, seeds)
    ref = _nx_ppr(graph, seeds, False)
    assert np.abs(x - ref).max() <= 1e-3 * ref.max()


def test_proximity_orders_persons_and_lived_experience_moves_it(graph):
    base = proximity(graph, "A1", "drug_outreach")
    le = proximity_le(graph, "A1", "drug_outreach")
    assert base.shape == (5,) and not base.flags.writeable
    p1, p2, p3, p4, p5 = range(5)
    assert base[p5] == 0.0  # A3 is linked to nothing: P5 cannot be reached
    # P3 succeeded on M1 (drug_outreach, in A1): the closest without lived experience.
    assert np.argmax(base) == p3
    assert min(base[p1], base[p2]) > base[p4] > 0
    # P1's lived experience (drug_use) links them to drug_outreach: only the LE variant
    # sees it, and puts them first.
    assert np.argmax(le) == p1
    assert le[p1] / le[p2] > base[p1] / base[p2]
    assert SIGNALS["proximity_le"].special_category
    assert not SIGNALS["proximity"].special_category


def test_ppr_seed_forms_and_errors(graph):
    a = personalized_pagerank(graph, {("area", "A1"): 1.0, ("need", "drug_outreach"): 1.0})
    b = personalized_pagerank(graph, [("need", "drug_outreach"), ("area", "A1")])
    c = personalized_pagerank(graph, mission_seeds("A1", "drug_outreach"))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    with pytest.raises(NotFoundError):
        personalized_pagerank(graph, [("area", "nowhere")])
    with pytest.raises(ValueError):
        personalized_pagerank(graph, {})
    with pytest.raises(ValueError):
        personalized_pagerank(graph, [("area", "A1")], restart=1.5)
    with pytest.raises(ValueError):
        personalized_pagerank(graph, {("area", "A1"): -1.0})


def test_ppr_cache(graph, monkeypatch):
    import graph._community_graph as cg

    calls = []
    solve = cg._solve_ppr
    monkeypatch.setattr(cg, "_solve_ppr", lambda *a, **k: calls.append(1) or solve(*a, **k))
    first = proximity(graph, "A1", "drug_outreach")
    second = proximity(graph, "A1", "drug_outreach")
    assert len(calls) == 1 and np.shares_memory(first, second)
    info = graph.cache_info()
    assert (info["hits"], info["misses"], info["size"]) == (1, 1, 1)
    proximity_le(graph, "A1", "drug_outreach")  # another variant: another entry
    proximity(graph, "A2", "drug_outreach")  # other seeds
    assert len(calls) == 3 and graph.cache_info()["size"] == 3
    snap = graph.snapshot(T)  # another as_of: its own cache
    proximity(snap, "A1", "drug_outreach")
    assert len(calls) == 4
    personalized_pagerank(graph, mission_seeds("A1", "drug_outreach"), use_cache=False)
    assert len(calls) == 5
    graph.cache_size = 2
    proximity(graph, "A3", "drug_outreach")
    assert graph.cache_info()["size"] == 2  # least recently used entries evicted
    again = proximity(graph, "A1", "drug_outreach")
    # The evicted result is composed again from the single-seed solves of A1 and
    # drug_outreach, which are still cached: no solve.
    assert len(calls) == 6 and graph.cache_info()["seed_size"] == 6
    np.testing.assert_array_equal(again, first)
    with pytest.raises(ValueError):
        first[0] = 1.0  # cached arrays are read-only
    # The single-seed cache is an LRU too, bounded in memory: room for two vectors here.
    graph.clear_cache()
    graph.seed_cache_mb = 2 * 4 * len(graph.nodes) / 2**20
    proximity(graph, "A1", "drug_outreach")  # both seeds in one call
    proximity(graph, "A2", "drug_outreach")  # A2 solved, A1 evicted
    assert len(calls) == 8
    info = graph.cache_info()
    assert (info["seed_size"], info["seed_max_size"]) == (2, 2)
    personalized_pagerank(graph, [("area", "A1")])
    assert len(calls) == 9


def test_ppr_composed_from_single_seeds_equals_the_joint_solve(graph):
    """PPR is linear in its seeds: a mission's vector is a weighted sum of single-seed
    solves, also when a seed has no edge (rent_arrears has no mission, job_search not even a
    lived-experience edge: a walker there returns to the seeds, and such a seed's mass
    weighs ``restart``, not 1)."""
    for g in (graph, graph.snapshot(T)):
        for le in (False, True):
            for seeds in (mission_seeds("A1", "drug_outreach"),
                          mission_seeds("A2", "rent_arrears"),
                          {("area", "A3"): 3.0, ("person", "P1"): 1.0,
                           ("need", "job_search"): 2.0}):
                composed = personalized_pagerank(g, seeds, lived_experience=le, tol=1e-6)
                joint = personalized_pagerank(g, seeds, lived_experience=le, tol=1e-6,
                                              use_cache=False)
                np.testing.assert_allclose(composed, joint, atol=2e-6)
                np.testing.assert_allclose(composed, _nx_ppr(g, seeds, le), atol=2e-6)
                assert composed.sum() == pytest.approx(1.0, abs=1e-6)
                assert not composed.flags.writeable
    # At the default tolerance, as close to networkx as the joint solve is required to be.
    seeds = mission_seeds("A2", "drug_outreach")
    ref = _nx_ppr(graph, seeds, True)
    x = personalized_pagerank(graph, seeds, lived_experience=True)
    assert np.abs(x - ref).max() <= 1e-3 * ref.max()
    # 7 distinct seeds per variant at tol 1e-6, then A2 and drug_outreach at the default tol
    assert graph.cache_info()["seed_misses"] == 2 * 7 + 2


def test_ppr_without_the_single_seed_cache_solves_each_seed_set(graph, monkeypatch):
    import graph._community_graph as cg

    calls = []
    solve = cg._solve_ppr
    monkeypatch.setattr(cg, "_solve_ppr", lambda *a, **k: calls.append(a[1].ndim) or solve(*a, **k))
    graph.seed_cache_mb = 0
    x = proximity(graph, "A1", "drug_outreach")
    proximity(graph, "A1", "rent_arrears")
    assert calls == [1, 1] and graph.cache_info()["seed_size"] == 0
    np.testing.assert_allclose(x, _nx_ppr(graph, mission_seeds("A1", "drug_outreach"), False)
                               [graph.nodes.slice("person")], atol=1e-3 * x.max())


def test_warm_solves_single_seeds_ahead_of_requests(graph, monkeypatch):
    import graph._community_graph as cg

    calls = []
    solve = cg._solve_ppr
    monkeypatch.setattr(cg, "_solve_ppr", lambda *a, **k: calls.append(1) or solve(*a, **k))
    seeds = [("need", "drug_outreach"), ("area", "A1"), ("area", "A2"), ("area", "A1")]
    assert graph.warm(seeds) == 3 and len(calls) == 3  # duplicates solved once
    assert graph.warm(seeds) == 0  # already warm
    assert graph.warm(seeds, lived_experience=True) == 3
    before = len(calls)
    base = proximity(graph, "A2", "drug_outreach")
    le = proximity_le(graph, "A1", "drug_outreach")
    assert len(calls) == before  # composed from warm seeds: no solve
    np.testing.assert_allclose(
        base, personalized_pagerank(graph, mission_seeds("A2", "drug_outreach"),
                                    use_cache=False)[graph.nodes.slice("person")],
        atol=1e-3 * base.max())
    assert np.argmax(le) == 0  # P1, as without the warm-up
    info = graph.cache_info()
    assert (info["seed_size"], info["seed_misses"], info["seed_hits"]) == (6, 6, 4)
    with pytest.raises(NotFoundError):
        graph.warm([("area", "A4")])
    with pytest.raises(ValueError):
        graph.warm([("area", "A3")], restart=0.0)
    # No more seeds than the cache holds, the first given first: it never evicts its own.
    graph.clear_cache()
    graph.seed_cache_mb = 2 * 4 * len(graph.nodes) / 2**20
    assert graph.warm([("area", "A3"), ("area", "A2"), ("area", "A1")]) == 2
    assert graph.warm([("area", "A3"), ("area", "A2")]) == 0


def test_warm_from_a_thread_while_requests_are_served(graph):
    import threading

    expected = {(a, n, le): personalized_pagerank(graph, mission_seeds(a, n),
                                                  lived_experience=le, use_cache=False)
                for a in ("A1", "A2", "A3") for n in NEED_TYPES for le in (False, True)}
    seeds = [("need", n) for n in NEED_TYPES] + [("area", a) for a in ("A1", "A2", "A3")]
    errors = []

    def warm() -> None:
        try:
            for le in (False, True):
                graph.warm(seeds, lived_experience=le)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=warm)
    thread.start()
    for (a, n, le), x in expected.items():
        got = personalized_pagerank(graph, mission_seeds(a, n), lived_experience=le)
        np.testing.assert_allclose(got, x, atol=1e-3 * x.max())
    thread.join()
    assert not errors
    assert graph.cache_info()["seed_size"] == 2 * len(seeds)


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_ppr_matches_networkx_on_random_graphs(data):
    n = data.draw(st.integers(2, 12))
    pairs = data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1),
                                         st.floats(0.05, 1.0)), max_size=30))
    ties = [(f"P{min(a, b)}", f"P{max(a, b)}", w) for a, b, w in pairs if a != b]
    persons = [(f"P{i}", f"A{i % 3}", None, False) for i in range(n)]
    graph = _assemble(_tables(persons, ties), 0, EdgeWeights(), LIVED_EXPERIENCE_NEEDS)
    seeds = {("person", f"P{data.draw(st.integers(0, n - 1))}"): 1.0, ("area", "A0"): 0.5}
    x = personalized_pagerank(graph, seeds, tol=1e-6, use_cache=False)
    np.testing.assert_allclose(x, _nx_ppr(graph, seeds, True), atol=2e-6)
    composed = personalized_pagerank(graph, seeds, tol=1e-6)  # from single-seed solves
    np.testing.assert_allclose(composed, x, atol=2e-6)


# --------------------------------------------------------------------- tie signals


def test_ties_succeeded(graph):
    everyone = ["P1", "P2", "P3", "P4", "P5"]
    at_t = graph.snapshot(T)
    r = ties_succeeded(at_t, everyone, "drug_outreach")
    assert r.columns == ["person_id", "ties_succeeded", "ties_succeeded_weight"]
    # Before T only P3 had a verified success (P2's was only claimed).
    assert r["ties_succeeded"].to_list() == [1, 1, 0, 0, 0]
    assert r["ties_succeeded_weight"].to_list() == pytest.approx([0.5, 1.0, 0, 0, 0])
    # Before P3's success was measured, nobody's tie had succeeded.
    early = ties_succeeded(at_t, everyone, "drug_outreach", as_of=d(4, 10))
    assert early["ties_succeeded"].sum() == 0
    # Without a cut: G1's success credits P1, P2, P3; P1-P2 counts once, at 0.8.
    full = ties_succeeded(graph, everyone, "drug_outreach")
    assert full["ties_succeeded"].to_list() == [2, 2, 2, 1, 0]
    assert full["ties_succeeded_weight"].to_list() == pytest.approx([1.3, 1.8, 1.5, 0.6, 0])
    # P2-P3 (May 1) did not exist on May 1 yet; P3's success (Apr 15) did.
    r = ties_succeeded(graph, ["P2"], "drug_outreach", as_of=d(5))
    assert r["ties_succeeded"].to_list() == [0]
    assert ties_succeeded(graph, everyone, "job_search")["ties_succeeded"].sum() == 0
    both = ties_succeeded(graph, ["P4"], ["job_search", "drug_outreach"])
    assert both["ties_succeeded"].to_list() == [1]
    assert ties_succeeded(graph, ["P5", "P1"], "drug_outreach")["person_id"].to_list() == [
        "P5", "P1"]
    with pytest.raises(ValueError, match="cannot be seen"):
        ties_succeeded(at_t, ["P1"], "drug_outreach", as_of=d(7))
    with pytest.raises(NotFoundError):
        ties_succeeded(graph, ["P9"], "drug_outreach")


def test_group_outcomes_credit_members_who_had_joined(graph):
    credited = graph.outcomes.filter(pl.col("mission_id") == "M2")
    people = graph.nodes.ids("person")
    assert sorted(people[credited["person"].to_numpy()]) == ["P1", "P2", "P3", "P4"]
    assert graph.snapshot(T).outcomes["mission_id"].to_list() == ["M1"]


# -------------------------------------------------------------------- group signals


def test_group_cohesion_and_reach(graph):
    # Full: pairs P1-P2 0.8 (max of 0.8 and 0.4), P1-P3 0.5, P2-P3 1.0; P3 is tied to P4.
    assert group_cohesion(graph, "G1") == pytest.approx(2.3 / 3)
    assert group_reach(graph, "G1") == 1
    assert sorted(group_members(graph, "G1").tolist()) == [0, 1, 2]
    # On Apr 15 the P2-P3 tie did not exist yet, nor P4.
    apr = graph.snapshot(d(4, 15))
    assert group_cohesion(apr, "G1") == pytest.approx(1.3 / 3)
    assert group_reach(apr, "G1") == 0
    # Before the group was formed it has no members.
    mar = graph.snapshot(d(3, 15))
    assert len(group_members(mar, "G1")) == 0 and group_cohesion(mar, "G1") == 0.0
    sig = group_signals(graph)
    assert sig.columns == ["group_id", "group_size", "group_cohesion", "group_reach"]
    assert sig.row(0) == ("G1", 3, pytest.approx(2.3 / 3), 1)
    assert group_signals(mar).height == 0  # G1 is not present yet
    assert group_signals(mar, ["G1"])["group_size"].to_list() == [0]
    with pytest.raises(NotFoundError):
        group_cohesion(graph, "G9")


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_group_signals_match_a_direct_computation(data):
    n = data.draw(st.integers(2, 10))
    pairs = data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1),
                                         st.floats(0.05, 1.0)), max_size=25))
    ties = [(f"P{min(a, b)}", f"P{max(a, b)}", w) for a, b, w in pairs if a != b]
    groups = [(f"G{i}", [f"P{p}" for p in sorted(ms)]) for i, ms in enumerate(data.draw(
        st.lists(st.sets(st.integers(0, n - 1), min_size=1, max_size=6), max_size=5)))]
    persons = [(f"P{i}", "A0", None, False) for i in range(n)]
    graph = _assemble(_tables(persons, ties, groups), 0, EdgeWeights(), {})
    best: dict[frozenset, float] = {}
    for a, b, w in ties:  # a pair tied twice keeps its larger weight
        best[frozenset((a, b))] = max(best.get(frozenset((a, b)), 0.0), w)
    sig = group_signals(graph)
    assert sig["group_id"].to_list() == [g for g, _ in groups]
    for (_, members), row in zip(groups, sig.iter_rows(named=True), strict=True):
        k = len(members)
        pairs_w = [best.get(frozenset((a, b)), 0.0) for i, a in enumerate(members)
                   for b in members[i + 1:]]
        cohesion = sum(pairs_w) / len(pairs_w) if k > 1 else 0.0
        reach = {p for pair in best for p in pair if pair & set(members)} - set(members)
        assert row["group_size"] == k
        assert row["group_cohesion"] == pytest.approx(cohesion, abs=1e-6)
        assert 0.0 <= row["group_cohesion"] <= 1.0 + 1e-6
        assert row["group_reach"] == len(reach)


def test_signal_table():
    assert {n for n, s in SIGNALS.items() if s.special_category} == {"proximity_le"}
    assert is_special_category("proximity_le") and not is_special_category("group_reach")
    with pytest.raises(NotFoundError):
        is_special_category("shoe_size")


def test_to_networkx_matches_the_csr(graph):
    g = graph.to_networkx(lived_experience=False)
    assert g.number_of_nodes() == len(graph.nodes)
    adj = graph.adjacency(lived_experience=False)
    assert g.number_of_edges() == adj.nnz // 2
    for u, v, w in g.edges(data="weight"):
        assert adj[graph.nodes[u], graph.nodes[v]] == pytest.approx(w)
    assert not any(k == "lived_experience" for *_, ks in g.edges(data="kinds") for k in ks)
    assert graph.to_networkx().number_of_edges() == g.number_of_edges() + N_LE
