"""Teams from ties (a hand-made community) and open missions for a person (a simulated one)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from support.matching_fixtures import open_city

from features import FEATURE_NAMES, FeatureModel
from graph import (
    Area,
    Assignment,
    Client,
    GroupMember,
    Mission,
    Outcome,
    PayRule,
    PeerGroup,
    Person,
    Store,
    Tie,
    VettingRecord,
    community_graph_from_frames,
    load_frames,
    open_store,
    payout_for,
    sqlite_url,
)
from graph._errors import NotFoundError
from graph._simulate import SNAPSHOT
from matching import (
    MatchingEngine,
    MissionRules,
    PriorRanker,
    Ranker,
    build_training_set,
    eligible_candidates,
    labelled_assignments,
)
from matching._teams import missions_for, suggest_teams


def d(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# -- a hand-made community -----------------------------------------------------------------

T = d(2026, 3, 1)


def _person(pid: str, area: str = "A1", cap: int = 2, consent: bool = True) -> Person:
    return Person(person_id=pid, area_id=area, joined_at=d(2025, 1, 1),
                  availability_min_per_week=600, max_concurrent=cap, skills="mediation",
                  lived_experience=None, consent_matching=consent,
                  consent_lived_experience=False)


def _mission(mid: str, created: datetime, starts: datetime, ends: datetime, status: str,
             team_max: int = 2, team_min: int = 1) -> Mission:
    return Mission(
        mission_id=mid, client_id="C1", need_type="school_absenteeism", area_id="A1",
        created_at=created, starts_at=starts, ends_at=ends, status=status,
        title="Bring absent pupils back", description="Meet the families of absent pupils",
        metric="absence rate", direction="decrease", baseline=0.2, target=0.1,
        pay_rule="threshold", unit_price=None, fee=1000.0, contract_cap=1000.0,
        team_min=team_min, team_max=team_max, minutes_per_day=60, days_per_week=2,
        vetting_regime="minors", radius_km=3.0)


def _tie(a: str, b: str, w: float) -> Tie:
    a, b = sorted((a, b))
    return Tie(person_a=a, person_b=b, kind="peer", weight=w, created_at=d(2025, 2, 1))


def _populate(store: Store) -> None:
    """PRO and PRO2 are proven (3 verified successes each); NEW1..NEW3 are newcomers.

    Ties to PRO from people every team must leave out: NOCONS (no consent to matching),
    NOVET (no vetting record), FAR (lives 11 km away, the radius is 3 km), BUSY (capacity
    1, already holding a mission during the window). GA and GB are a peer group.
    """
    with store.session() as s:
        s.add_all([Area(area_id="A1", name="Nord", lat=48.85, lon=2.35),
                   Area(area_id="A2", name="Gare", lat=48.86, lon=2.36),
                   Area(area_id="A3", name="Loin", lat=48.95, lon=2.35)])
        s.add(Client(client_id="C1", kind="school", name="Collège"))
        s.flush()
        ok = ["PRO", "PRO2", "NEW1", "NEW2", "NEW3", "GA", "GB", "FAR", "BUSY"]
        s.add_all([_person(p, area="A3" if p == "FAR" else "A2" if p == "NEW2" else "A1",
                           cap=1 if p == "BUSY" else 2) for p in ok])
        s.add_all([_person("NOCONS", consent=False), _person("NOVET")])
        s.flush()
        s.add_all([VettingRecord(person_id=p, regime="minors", status="valid",
                                 valid_from=d(2025, 1, 1), expires_at=None, reference=f"R-{p}")
                   for p in [*ok, "NOCONS"]])
        s.add_all([_tie("PRO", "NEW1", 0.8), _tie("NEW1", "NEW2", 0.3), _tie("PRO", "PRO2", 0.6),
                   _tie("PRO", "NOCONS", 0.9), _tie("PRO", "NOVET", 0.9),
                   _tie("NEW1", "FAR", 0.9), _tie("PRO", "BUSY", 0.9), _tie("GA", "GB", 0.7)])
        s.add(PeerGroup(group_id="G1", kind="peer", created_at=d(2025, 2, 1)))
        s.flush()
        s.add_all([GroupMember(group_id="G1", person_id=p, joined_at=d(2025, 2, 1))
                   for p in ("GA", "GB")])
        past = [_mission(f"M{i}", d(2025, 3 * i, 1), d(2025, 3 * i, 2), d(2025, 3 * i + 2, 1),
                         "closed") for i in (1, 2, 3)]
        s.add_all(past)
        s.add(_mission("MB", T - timedelta(days=20), T - timedelta(days=10),
                       T + timedelta(days=40), "measuring"))
        window = dict(created=T - timedelta(days=2), starts=T + timedelta(days=7),
                      ends=T + timedelta(days=60), status="open")
        s.add_all([_mission("MT", **window), _mission("MT1", team_max=1, **window),
                   _mission("MT3", team_max=3, **window)])
        s.flush()
        for i in (1, 2, 3):
            for p in ("PRO", "PRO2"):
                aid = f"AS{i}{p}"
                s.add(Assignment(assignment_id=aid, mission_id=f"M{i}", person_id=p,
                                 group_id=None, shortlist_id=None,
                                 assigned_at=d(2025, 3 * i, 1), status="completed",
                                 propensity=None))
                s.flush()
                s.add(Outcome(outcome_id=f"O{i}{p}", assignment_id=aid,
                              measured_at=d(2025, 3 * i + 2, 5), value=0.09, success=True,
                              status="verified", payout=1000.0))
        s.add(Assignment(assignment_id="ASB", mission_id="MB", person_id="BUSY", group_id=None,
                         shortlist_id=None, assigned_at=T - timedelta(days=12),
                         status="active", propensity=None))
        Store.bump_version(s)


@pytest.fixture(scope="module")
def hand_engine(tmp_path_factory):
    store = open_store(sqlite_url(tmp_path_factory.mktemp("teams") / "store.db"))
    try:
        _populate(store)
        frames = load_frames(store)
        model = FeatureModel().fit(frames, T)
        yield MatchingEngine(frames, model, PriorRanker(), now=T)
    finally:
        store.dispose()


def _eligible_members(engine: MatchingEngine, mission_id: str) -> set[str]:
    """Persons passing every rule a group member must pass, over the whole community."""
    rules = MissionRules.of(engine.mission(mission_id))
    ok = eligible_candidates(engine.snapshot, engine.vetting, replace(rules, team_min=1))
    return set(engine.snapshot.person_ids[ok.person_idx].tolist())


def _connected(engine: MatchingEngine, members: tuple[str, ...]) -> bool:
    idx = [engine.snapshot.person_index[m] for m in members]
    sub = sp.csr_matrix(engine.snapshot.ties[idx][:, idx])
    return connected_components(sub > 0, directed=False)[0] == 1


def test_teams_are_tied_eligible_and_include_the_mentor_pair(hand_engine):
    teams = suggest_teams(hand_engine, "MT", k=10)
    eligible = _eligible_members(hand_engine, "MT")
    assert eligible == {"PRO", "PRO2", "NEW1", "NEW2", "NEW3", "GA", "GB"}
    assert teams, "tied eligible persons exist"
    sets = [frozenset(t.members) for t in teams]
    assert len(sets) == len(set(sets)), "no duplicate teams"
    for t in teams:
        assert len(t.members) == 2  # team_max 2
        assert set(t.members) <= eligible
        assert _connected(hand_engine, t.members)
        assert 0.0 < t.p_team <= 1.0
        assert t.p_team == pytest.approx(1 - np.prod([1 - p for p in t.member_scores]))
    assert [t.rank for t in teams] == list(range(1, len(teams) + 1))
    assert [t.score for t in teams] == sorted((t.score for t in teams), reverse=True)
    # The existing peer group is a shortlist candidate already, not a suggested team.
    assert frozenset({"GA", "GB"}) not in sets
    by_set = {frozenset(t.members): t for t in teams}
    mentor = by_set[frozenset({"PRO", "NEW1"})]
    assert mentor.proven == ("PRO",) and mentor.newcomers == ("NEW1",)
    assert mentor.why == "a proven person with a newcomer they know, closely tied"
    assert mentor.tie_strength == pytest.approx(0.8)
    assert by_set[frozenset({"NEW1", "NEW2"})].why == "newcomers who know each other"
    assert by_set[frozenset({"PRO", "PRO2"})].why.startswith("proven people who know each other")
    # Every tied pair of eligible persons (bar the group) is there: nothing else.
    assert set(sets) == {frozenset(p) for p in [("PRO", "NEW1"), ("NEW1", "NEW2"),
                                                 ("PRO", "PRO2")]}


def test_a_proven_person_with_a_newcomer_is_kept_on_a_short_list(hand_engine):
    (best,) = suggest_teams(hand_engine, "MT", k=1)
    assert best.proven and best.newcomers


def test_excluded_persons_leave_their_teams(hand_engine):
    teams = suggest_teams(hand_engine, "MT", k=10, exclude=["NEW1"])
    assert {frozenset(t.members) for t in teams} == {frozenset({"PRO", "PRO2"})}


def test_team_sizes_follow_the_mission(hand_engine):
    assert suggest_teams(hand_engine, "MT1") == []  # a mission for one person
    teams = suggest_teams(hand_engine, "MT3", k=10, max_per_person=10)
    sizes = {len(t.members) for t in teams}
    assert sizes == {2, 3}
    triples = {frozenset(t.members) for t in teams if len(t.members) == 3}
    assert frozenset({"PRO", "NEW1", "NEW2"}) in triples
    assert frozenset({"PRO", "PRO2", "NEW1"}) in triples
    eligible = _eligible_members(hand_engine, "MT3")
    for t in teams:
        assert set(t.members) <= eligible and _connected(hand_engine, t.members)
    assert {len(t.members) for t in suggest_teams(hand_engine, "MT3", k=10, max_size=2)} == {2}


def test_one_person_fills_at_most_max_per_person_places(hand_engine):
    for cap in (1, 2):
        teams = suggest_teams(hand_engine, "MT3", k=10, max_per_person=cap)
        members = [m for t in teams for m in t.members]
        assert max(members.count(m) for m in members) <= cap
        assert any(t.proven and t.newcomers for t in teams)


def test_missions_for_on_the_hand_made_community(hand_engine):
    offers = missions_for(hand_engine, "NEW1", k=10)
    # MT, MT1 and MT3 are open and take one person; MB is measuring, M1-M3 are closed.
    keys = [(-o.score, -o.expected_payout, o.mission_id) for o in offers]
    assert keys == sorted(keys)
    assert {o.mission_id for o in offers} == {"MT", "MT1", "MT3"}
    assert all(o.kind == "person" and o.candidate_id == "NEW1" for o in offers)
    assert missions_for(hand_engine, "NOCONS") == []
    assert missions_for(hand_engine, "NOVET") == []  # every open mission needs vetting
    assert missions_for(hand_engine, "FAR") == []  # outside every radius
    assert missions_for(hand_engine, "BUSY") == []  # at capacity during the window
    with pytest.raises(NotFoundError):
        missions_for(hand_engine, "NOBODY")


# -- a simulated community with open missions ----------------------------------------------

NOW = datetime.fromtimestamp(SNAPSHOT, UTC)


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    """The store, a feature model and a logistic ranker trained on its outcomes."""
    root = tmp_path_factory.mktemp("open_city")
    store = open_city(root)
    frames = load_frames(store)
    model = FeatureModel().fit(frames, NOW)
    graph = community_graph_from_frames(frames)
    rows = build_training_set(frames, model, labelled_assignments(frames, until=NOW),
                              graph=graph).rows
    ranker = Ranker(estimator="logistic").fit(rows.select(FEATURE_NAMES),
                                              rows["label"].to_numpy(),
                                              times=rows["assigned_at"])
    store.dispose()
    return root, frames, model, ranker, MatchingEngine(frames, model, ranker, now=NOW,
                                                       graph=graph)


def test_missions_for_offers_only_eligible_open_missions_sorted(city):
    _, frames, _, _, engine = city
    open_ids = sorted(frames.missions.filter(pl.col("status") == "open")["mission_id"])
    full = {m: engine.eligible(engine.mission(m), use_retrieval=False) for m in open_ids}
    persons_ok = {m: set(e.person_idx.tolist()) for m, e in full.items()}
    seen = 0
    for pid in sorted(frames.persons["person_id"].to_list())[:60]:
        i = engine.snapshot.person_index[pid]
        offers = missions_for(engine, pid, k=100)
        seen += len(offers)
        keys = [(-o.score, -o.expected_payout, o.mission_id) for o in offers]
        assert keys == sorted(keys)
        for o in offers:
            assert o.mission_id in full  # open
            if o.kind == "person":
                assert o.candidate_id == pid and i in persons_ok[o.mission_id]
            else:
                assert o.candidate_id in full[o.mission_id].group_ids
                assert i in set(engine.snapshot.group_members[o.candidate_id].tolist())
        # Nothing the person may take alone is missing.
        assert {m for m in open_ids if i in persons_ok[m]} <= {o.mission_id for o in offers}
    assert seen > 200, "the open missions reach many of these persons"


def test_a_fresh_success_lifts_the_related_missions(city, tmp_path):
    root, frames, model, ranker, engine = city
    family = model.fitted_.need_family
    snap = engine.snapshot
    # A newcomer offered many missions; the family of their lowest-ranked offer.
    pid, before = next((p, offers) for p in sorted(frames.persons["person_id"].to_list())
                       if snap.n_outcomes[snap.person_index[p]] == 0
                       and len(offers := missions_for(engine, p, k=100)) >= 10)
    target = family[before[-1].need_type]
    need = before[-1].need_type

    # Their fresh verified success on a mission of that need, in their own area.
    shutil.copy(root / "store.db", tmp_path / "store.db")
    store = open_store(sqlite_url(tmp_path / "store.db"))
    area = frames.persons.filter(pl.col("person_id") == pid)["area_id"][0]
    r = frames.missions.filter((pl.col("need_type") == need)
                               & (pl.col("status") == "closed")).sort("mission_id").row(
                                   0, named=True)
    r.update(mission_id="MX1", area_id=area, created_at=NOW - timedelta(days=60),
             starts_at=NOW - timedelta(days=55), ends_at=NOW - timedelta(days=5))
    rule = PayRule(pay_rule=r["pay_rule"], direction=r["direction"], baseline=r["baseline"],
                   target=r["target"], unit_price=r["unit_price"], fee=r["fee"],
                   contract_cap=r["contract_cap"])
    with store.session() as s:
        s.add(Mission(**r))
        s.flush()
        s.add(Assignment(assignment_id="AX1", mission_id="MX1", person_id=pid, group_id=None,
                         shortlist_id=None, assigned_at=NOW - timedelta(days=56),
                         status="completed", propensity=None))
        s.flush()
        s.add(Outcome(outcome_id="OX1", assignment_id="AX1", measured_at=NOW - timedelta(days=2),
                      value=r["target"], success=True, status="verified",
                      payout=payout_for(rule, r["target"], 0.0)))
        Store.bump_version(s)
    after_engine = MatchingEngine(load_frames(store), model, ranker, now=NOW)
    store.dispose()
    after = missions_for(after_engine, pid, k=100)

    assert {o.mission_id for o in after} == {o.mission_id for o in before}
    rank0 = {o.mission_id: o.rank for o in before}
    score0 = {o.mission_id: o.score for o in before}
    related = [o for o in after if family[o.need_type] == target]
    others = [o for o in after if family[o.need_type] != target]
    assert related and others
    assert all(o.rank <= rank0[o.mission_id] for o in related)
    assert any(o.rank < rank0[o.mission_id] for o in related)
    gain = np.mean([o.score - score0[o.mission_id] for o in related])
    assert gain > 0.05
    assert gain > 2 * max(0.0, np.mean([o.score - score0[o.mission_id] for o in others]))
    # The reason names the success (same need: "of this kind"; same family: "related").
    assert any("succeeded" in r for o in related for r in o.reasons)
