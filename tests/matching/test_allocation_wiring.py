"""Allocation wired to the engine, on a simulated community with open missions."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from support.matching_fixtures import open_city

from features import FeatureModel
from graph import (
    Assignment,
    Mission,
    Store,
    load_frames,
)
from graph._errors import NotFoundError, ValidationError
from graph._simulate import SNAPSHOT
from matching import MatchingEngine, PriorRanker
from matching._allocation_wiring import allocate_open_missions, allocation_report_json

NOW = datetime.fromtimestamp(SNAPSHOT, UTC)


def _open_city(root, n_open: int = 40) -> Store:
    """The teams tests' community (support.matching_fixtures.open_city), plus a staffed
    mission "MH" running through every open window, accepted by every fourth person: a hold
    they carry into the allocation.
    """
    store = open_city(root, n_open)
    simulated = load_frames(store).missions.filter(~pl.col("mission_id").str.starts_with("MO"))
    template = simulated.sort("mission_id").tail(n_open).row(0, named=True)
    with store.session() as s:
        s.add(Mission(**{**template, "mission_id": "MH",
                         "status": "staffed", "created_at": NOW - timedelta(days=20),
                         "starts_at": NOW + timedelta(days=1),
                         "ends_at": NOW + timedelta(days=200)}))
        s.flush()
        persons = sorted(load_frames(store).persons["person_id"].to_list())
        s.add_all([Assignment(assignment_id=f"AH{i:04d}", mission_id="MH", person_id=p,
                              group_id=None, shortlist_id=None,
                              assigned_at=NOW - timedelta(days=10), status="accepted",
                              propensity=None)
                   for i, p in enumerate(persons[::4])])
        Store.bump_version(s)
    return store


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """The day-one engine: a PriorRanker and a feature model fitted on all data."""
    store = _open_city(tmp_path_factory.mktemp("alloc_city"))
    frames = load_frames(store)
    store.dispose()
    return MatchingEngine(frames, FeatureModel().fit(frames, NOW), PriorRanker(), now=NOW)


@pytest.fixture(scope="module")
def runs(engine):
    return {floor: allocate_open_missions(engine, newcomer_floor=floor)
            for floor in (0.0, 0.2, 0.95)}


def _verified_counts(frames) -> Counter:  # noqa: ANN001
    """Verified outcomes per person before NOW (through groups too), from the frames."""
    out = frames.outcomes.filter((pl.col("status") == "verified")
                                 & (pl.col("measured_at") < NOW))
    counts = Counter(out["person_id"].drop_nulls().to_list())
    via = out.filter(pl.col("group_id").is_not_null()).join(
        frames.group_members.filter(pl.col("joined_at") < NOW), on="group_id")
    counts.update(via["person_id_right"].to_list())
    return counts


def _hold_windows(frames) -> dict[str, list[tuple[datetime, datetime]]]:  # noqa: ANN001
    """docs/simulator.md rule 6, re-implemented from the frames: per person, the windows of
    the missions of their assignments (direct or through a group) made before NOW and not
    declined or withdrawn."""
    made = frames.assignments.filter(
        (pl.col("assigned_at") < NOW) & ~pl.col("status").is_in(["declined", "withdrawn"]))
    via = made.filter(pl.col("group_id").is_not_null()).join(
        frames.group_members.select("group_id", pl.col("person_id").alias("member")),
        on="group_id")
    rows = pl.concat([made.filter(pl.col("person_id").is_not_null())
                      .select("person_id", "mission_id"),
                      via.select(pl.col("member").alias("person_id"), "mission_id")])
    rows = rows.join(frames.missions.select("mission_id", "starts_at", "ends_at"),
                     on="mission_id")
    out: dict[str, list[tuple[datetime, datetime]]] = {}
    for p, start, end in rows.select("person_id", "starts_at", "ends_at").iter_rows():
        out.setdefault(p, []).append((start, end))
    return out


def _holds(windows, person: str, mission: dict) -> int:  # noqa: ANN001
    return sum(s <= mission["ends_at"] and mission["starts_at"] <= e
               for s, e in windows.get(person, []))


def _members(engine, kind: str, cid: str) -> list[str]:  # noqa: ANN001
    if kind == "person":
        return [cid]
    return engine.snapshot.person_ids[engine.snapshot.group_members[cid]].tolist()


def test_every_open_mission_is_considered(engine, runs):
    run = runs[0.2]
    open_ids = sorted(engine.frames.missions.filter(pl.col("status") == "open")["mission_id"])
    assert list(run.missions) == open_ids
    assert set(run.assignments) | set(run.without_candidates) <= set(open_ids)
    assert len(run.assignments) >= 20, "most open missions are staffed"
    for mid in run.without_candidates:
        e = engine.eligible(engine.mission(mid), use_retrieval=False)
        assert len(e.person_idx) == 0 and not e.group_ids


def test_nobody_beyond_capacity(engine, runs):
    frames = engine.frames
    capacity = dict(zip(frames.persons["person_id"], frames.persons["max_concurrent"],
                        strict=True))
    windows = _hold_windows(frames)
    held = 0
    for run in runs.values():
        # Remaining capacity given to the solver: capacity minus the most holds overlapping
        # any one of the person's candidate missions.
        missions_of: dict[str, set[str]] = {}
        for om in run.problem.missions:
            for c in om.candidates:
                for p in c.members:
                    missions_of.setdefault(p, set()).add(om.mission_id)
        for pc in run.problem.persons:
            worst = max(_holds(windows, pc.person_id, engine.mission(m))
                        for m in missions_of[pc.person_id])
            assert pc.capacity == capacity[pc.person_id] - worst
            held += worst > 0
        taken: dict[str, list[str]] = {}
        for mid, cands in run.assignments.items():
            for c in cands:
                for p in _members(engine, c.kind, c.candidate_id):
                    taken.setdefault(p, []).append(mid)
        assert taken
        for person, missions in taken.items():
            assert len(missions) == len(set(missions)), "once per mission"
            worst = max(_holds(windows, person, engine.mission(m)) for m in missions)
            # New missions counted as concurrent, plus the most holds overlapping any of them.
            assert worst + len(missions) <= capacity[person]
    assert held > 50, "holds (mission MH) reach many candidates"


def test_assignments_pass_the_engines_rules_and_team_sizes(engine, runs):
    for run in runs.values():
        for mid, cands in run.assignments.items():
            m = engine.mission(mid)
            full = engine.eligible(m, use_retrieval=False)
            persons = set(engine.snapshot.person_ids[full.person_idx].tolist())
            seats = 0
            for c in cands:
                if c.kind == "person":
                    assert c.candidate_id in persons
                else:
                    assert c.candidate_id in full.group_ids
                seats += len(c.members)
                assert list(c.members) == _members(engine, c.kind, c.candidate_id)
            assert m["team_min"] <= seats <= m["team_max"]


def test_the_newcomer_floor_holds_and_has_a_price(engine, runs):
    counts = _verified_counts(engine.frames)
    newcomer_cut = engine.config.newcomer_outcomes
    for floor, run in runs.items():
        a = run.allocation
        seats = [p for cands in run.assignments.values() for c in cands for p in c.members]
        newcomers = sum(counts[p] < newcomer_cut for p in seats)
        assert (a.seats, a.newcomer_seats) == (len(seats), newcomers)
        assert newcomers >= floor * len(seats) - 1e-9
        assert a.price_of_floor >= 0
        assert a.objective_without_floor >= a.objective - 1e-9
        assert a.price_of_floor == pytest.approx(a.objective_without_floor - a.objective)
        # The objective is what the chosen candidates are worth.
        assert a.objective == pytest.approx(
            sum(c.p_success for cands in run.assignments.values() for c in cands))
    assert runs[0.0].allocation.price_of_floor == 0
    free_share = runs[0.0].allocation.newcomer_share
    assert free_share < 0.95, "the high floor binds on this community"
    assert runs[0.95].allocation.newcomer_share >= 0.95 > free_share
    assert runs[0.95].allocation.objective < runs[0.0].allocation.objective


def test_value_expected_payout(engine):
    ids = sorted(engine.frames.missions.filter(pl.col("status") == "open")["mission_id"])[:12]
    run = allocate_open_missions(engine, mission_ids=ids, candidates_per_mission=10,
                                 value="expected_payout")
    assert set(run.missions) == set(ids)
    chosen = [c for cands in run.assignments.values() for c in cands]
    assert chosen
    assert run.allocation.objective == pytest.approx(sum(c.expected_payout for c in chosen))
    for mid, cands in run.assignments.items():
        m = engine.mission(mid)
        given = next(om for om in run.problem.missions if om.mission_id == mid).candidates
        scored = engine.score(m, *engine.retrieve(m, engine.eligible(m))).sort(
            ["p_success", "candidate_id"], descending=[True, False])
        best = set(scored["candidate_id"].head(10).to_list())
        assert best <= {c.candidate_id for c in given} and len(given) <= 10 + 2
        assert all(c.expected_payout >= 0 for c in cands)
        assert m["status"] == "open"


def test_refuses_missions_that_are_not_open(engine):
    closed = engine.frames.missions.filter(pl.col("status") == "closed")["mission_id"][0]
    with pytest.raises(ValidationError, match="not open"):
        allocate_open_missions(engine, mission_ids=[closed])
    with pytest.raises(NotFoundError):
        allocate_open_missions(engine, mission_ids=["NO-SUCH-MISSION"])
    with pytest.raises(ValidationError):
        allocate_open_missions(engine, value="clicks")


def test_report_json(runs):
    run = runs[0.2]
    report = allocation_report_json(run)
    text = json.dumps(report)
    assert json.loads(text) == report
    a = run.allocation
    assert report["missions_open"] == len(run.missions)
    assert report["missions_staffed"] == len(a.staffed) == len(report["assignments"])
    assert report["price_of_floor"] == pytest.approx(a.price_of_floor, abs=1e-6)
    assert report["newcomer_floor"] == 0.2
    assert report["newcomer_share"] >= 0.2
    assert report["model_version"] == PriorRanker().version
    assert {"scoring", "solve", "total"} <= set(report["seconds"])
    first = next(iter(report["assignments"].values()))[0]
    assert set(first) == {"kind", "candidate_id", "members", "p_success", "expected_payout",
                          "newcomer"}
