"""Helpers shared by the matching tests: hand-made communities, a re-implementation of the
hard rules from raw rows, rankers with chosen scores, and a simulated community.

The rules here are written again from docs/simulator.md ("Hard eligibility rules"), from the
rows as they go into the store, without reading matching/: they are the reference the engine
is checked against.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

import features
import graph
import matching
from graph._simulate import SNAPSHOT
from matching import BaseRanker
from support.simulated import simulated_store

DAY = timedelta(days=1)


def d(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# Defaults of the hand-made rows: everyone joined, was checked and teamed up long before.
JOINED = d(2024, 1, 1)
CHECKED = d(2024, 1, 1)
TIED = d(2024, 2, 1)
TEAMED = d(2024, 3, 1)
ASSIGNED = d(2025, 1, 10)


# ----------------------------------------------------------------------------- communities


@dataclass
class Community:
    """Rows of a small community, written to a fresh store with :meth:`write`.

    Every ``add_*`` method takes the columns of the store's table, with defaults that make a
    person eligible for a default mission; tests change one thing at a time.
    """

    areas: list[dict] = field(default_factory=list)
    persons: list[dict] = field(default_factory=list)
    vetting: list[dict] = field(default_factory=list)
    ties: list[dict] = field(default_factory=list)
    groups: list[dict] = field(default_factory=list)
    members: list[dict] = field(default_factory=list)
    missions: list[dict] = field(default_factory=list)
    assignments: list[dict] = field(default_factory=list)
    outcomes: list[dict] = field(default_factory=list)

    def add_area(self, area_id: str, lat: float, lon: float) -> Community:
        self.areas.append(dict(area_id=area_id, name=area_id, lat=lat, lon=lon))
        return self

    def add_person(self, person_id: str, area_id: str = "A1", **kw: Any) -> Community:
        row = dict(person_id=person_id, area_id=area_id, joined_at=JOINED,
                   availability_min_per_week=600, max_concurrent=2, skills="teaching",
                   lived_experience=None, consent_matching=True,
                   consent_lived_experience=False)
        row.update(kw)
        self.persons.append(row)
        return self

    def add_vetting(self, person_id: str, regime: str = "minors", status: str = "valid",
                    valid_from: datetime = CHECKED, expires_at: datetime | None = None
                    ) -> Community:
        self.vetting.append(dict(person_id=person_id, regime=regime, status=status,
                                 valid_from=valid_from, expires_at=expires_at,
                                 reference=f"ref-{len(self.vetting)}"))
        return self

    def add_tie(self, a: str, b: str, weight: float = 0.8, kind: str = "peer",
                created_at: datetime = TIED) -> Community:
        a, b = sorted((a, b))
        self.ties.append(dict(person_a=a, person_b=b, kind=kind, weight=weight,
                              created_at=created_at))
        return self

    def add_group(self, group_id: str, members: Iterable[str],
                  joined_at: datetime | Mapping[str, datetime] = TEAMED,
                  created_at: datetime = TEAMED) -> Community:
        self.groups.append(dict(group_id=group_id, kind="peer", created_at=created_at))
        for p in members:
            at = joined_at.get(p, created_at) if isinstance(joined_at, Mapping) else joined_at
            self.members.append(dict(group_id=group_id, person_id=p, joined_at=at))
        return self

    def add_mission(self, mission_id: str, area_id: str = "A1", **kw: Any) -> Community:
        self.missions.append(mission_row(mission_id, area_id, **kw))
        return self

    def add_assignment(self, assignment_id: str, mission_id: str, *, person: str | None = None,
                       group: str | None = None, at: datetime = ASSIGNED,
                       status: str = "active", propensity: float | None = None
                       ) -> Community:
        self.assignments.append(dict(assignment_id=assignment_id, mission_id=mission_id,
                                     person_id=person, group_id=group, shortlist_id=None,
                                     assigned_at=at, status=status, propensity=propensity))
        return self

    def add_outcome(self, outcome_id: str, assignment_id: str, at: datetime, success: bool,
                    status: str = "verified") -> Community:
        self.outcomes.append(dict(outcome_id=outcome_id, assignment_id=assignment_id,
                                  measured_at=at, value=1.0 if success else 0.0,
                                  success=success, status=status,
                                  payout=(100.0 if success else 0.0)
                                  if status == "verified" else None))
        return self

    # -- store and engine ------------------------------------------------------------------
    def write(self, store: graph.Store) -> graph.Store:
        """Insert every row (parents first) in one transaction."""
        with store.session() as s:
            s.add(graph.Client(client_id="C1", kind="city", name="City"))
            batches = [(graph.Area, self.areas), (graph.Person, self.persons),
                       (graph.VettingRecord, self.vetting), (graph.Tie, self.ties),
                       (graph.PeerGroup, self.groups), (graph.GroupMember, self.members),
                       (graph.Mission, self.missions), (graph.Assignment, self.assignments),
                       (graph.Outcome, self.outcomes)]
            for model, rows in batches:
                s.add_all(model(**r) for r in rows)
                s.flush()
            graph.Store.bump_version(s)
        return store

    def frames(self) -> graph.CommunityFrames:
        store = self.write(graph.open_store("sqlite://"))
        try:
            return graph.load_frames(store)
        finally:
            store.dispose()

    def engine(self, now: datetime, ranker: BaseRanker | None = None,
               config: matching.ShortlistConfig | None = None) -> matching.MatchingEngine:
        """A matching engine over this community as of ``now`` (feature model fit at now)."""
        return engine_of(self.frames(), now, ranker, config)

    def mission(self, mission_id: str) -> dict:
        return next(m for m in self.missions if m["mission_id"] == mission_id)


def mission_row(mission_id: str, area_id: str = "A1", **kw: Any) -> dict:
    """A mission's columns, with defaults: one person, 60 min x 2 days, no vetting or
    radius, running through March 2025."""
    row = dict(mission_id=mission_id, client_id="C1", need_type="school_absenteeism",
               area_id=area_id, created_at=d(2025, 1, 1), starts_at=d(2025, 2, 1),
               ends_at=d(2025, 3, 31), status="open", title="Halve absenteeism",
               description="Meet the families of absent pupils", metric="absence rate",
               direction="decrease", baseline=0.2, target=0.1, pay_rule="threshold",
               unit_price=None, fee=1000.0, contract_cap=1000.0, team_min=1, team_max=1,
               minutes_per_day=60, days_per_week=2, vetting_regime=None, radius_km=None)
    row.update(kw)
    return row


def engine_of(frames: graph.CommunityFrames, now: datetime, ranker: BaseRanker | None = None,
              config: matching.ShortlistConfig | None = None,
              cutoff: datetime | None = None) -> matching.MatchingEngine:
    fm = features.FeatureModel().fit(frames, cutoff or now)
    return matching.MatchingEngine(frames, fm, ranker or matching.PriorRanker(), now=now,
                                   config=config)


def candidate_set(engine: matching.MatchingEngine, e: matching.Eligibility
                  ) -> set[tuple[str, str]]:
    """An eligibility as {("person", id), ("group", id)}."""
    persons = engine.snapshot.person_ids[e.person_idx].tolist()
    return {("person", p) for p in persons} | {("group", g) for g in e.group_ids}


def eligible_set(engine: matching.MatchingEngine, mission: Mapping, exclude: Iterable[str] = (),
                 use_retrieval: bool = False) -> set[tuple[str, str]]:
    return candidate_set(engine, engine.eligible(dict(mission), exclude,
                                                 use_retrieval=use_retrieval))


# ------------------------------------------------------------------- the rules, written again


def km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance on a sphere of radius 6371.0 km."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    h = (math.sin((p2 - p1) / 2) ** 2
         + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2)
    return 2 * 6371.0 * math.asin(math.sqrt(min(h, 1.0)))


class ReferenceRules:
    """Rules 1-8 of docs/simulator.md over raw rows, as of a time ``t``.

    The time is exclusive, as the engine's snapshot is: a person or a membership dated at
    ``t`` exactly does not exist yet (the document writes ``joined_at <= t``; the tests keep
    clear of that boundary).
    """

    def __init__(self, community: Community, t: datetime) -> None:
        self.t = t
        self.areas = {a["area_id"]: (a["lat"], a["lon"]) for a in community.areas}
        self.persons = {p["person_id"]: p for p in community.persons}
        self.missions = {m["mission_id"]: m for m in community.missions}
        self.checks = defaultdict(list)
        for v in community.vetting:
            self.checks[(v["person_id"], v["regime"])].append(v)
        self.members: dict[str, list[dict]] = defaultdict(list)
        for r in community.members:
            self.members[r["group_id"]].append(r)
        self.held: dict[str, list[dict]] = defaultdict(list)  # assignments per person
        for a in community.assignments:
            who = ([a["person_id"]] if a["person_id"] is not None
                   else [r["person_id"] for r in self.members[a["group_id"]]])
            for p in who:
                self.held[p].append(a)

    def why_not(self, person_id: str, m: Mapping) -> str | None:
        """The first of rules 1-7 a person fails for mission ``m`` (None: passes them all)."""
        p, t = self.persons[person_id], self.t
        if not p["consent_matching"]:
            return "consent"
        if not p["joined_at"] < t:
            return "existence"
        regime = m.get("vetting_regime")
        if regime and not any(
            v["status"] == "valid" and v["valid_from"] <= m["starts_at"]
            and (v["expires_at"] is None or v["expires_at"] >= m["ends_at"])
            for v in self.checks[(person_id, regime)]
        ):
            return "vetting"
        if p["availability_min_per_week"] < m["minutes_per_day"] * m["days_per_week"]:
            return "availability"
        if m.get("radius_km") is not None:
            if m["area_id"] not in self.areas or p["area_id"] not in self.areas:
                return "distance"
            if km(*self.areas[p["area_id"]], *self.areas[m["area_id"]]) > m["radius_km"]:
                return "distance"
        holds = 0
        for a in self.held[person_id]:
            if not a["assigned_at"] < t:
                continue
            if a["mission_id"] == m["mission_id"]:
                return "once_per_mission"
            other = self.missions[a["mission_id"]]
            if (a["status"] not in ("declined", "withdrawn")
                    and other["starts_at"] <= m["ends_at"] and m["starts_at"] <= other["ends_at"]):
                holds += 1
        if holds >= p["max_concurrent"]:
            return "capacity"
        return None

    def eligible(self, m: Mapping, exclude: Iterable[str] = ()) -> set[tuple[str, str]]:
        """Every eligible candidate of ``m``: persons alone and peer groups."""
        exclude = set(exclude)
        ok = {pid for pid in self.persons
              if pid not in exclude and self.why_not(pid, m) is None}
        out = set()
        if m["team_min"] == 1:
            out |= {("person", p) for p in ok}
        for g, rows in self.members.items():
            if g in exclude or not m["team_min"] <= len(rows) <= m["team_max"]:
                continue
            if all(r["joined_at"] < self.t and r["person_id"] in ok for r in rows):
                out.add(("group", g))
        return out


def community_from_frames(frames: graph.CommunityFrames) -> Community:
    """The raw rows of loaded frames (a simulated community) as a :class:`Community`."""
    def rows(frame: pl.DataFrame) -> list[dict]:
        return list(frame.iter_rows(named=True))

    return Community(areas=rows(frames.areas), persons=rows(frames.persons),
                     vetting=rows(frames.vetting), ties=rows(frames.ties),
                     groups=rows(frames.groups), members=rows(frames.group_members),
                     missions=rows(frames.missions), assignments=rows(frames.assignments))


# ------------------------------------------------------------------------------- rankers


class TableRanker(BaseRanker):
    """P(success) read from a table by candidate id (``default`` for anyone else).

    A test sets ``scores`` to whatever it wants the engine to see, e.g. the highest scores
    for candidates who must never be listed.
    """

    def __init__(self, scores: Mapping[str, float] | None = None, default: float = 0.3) -> None:
        self.scores = scores
        self.default = default

    def __sklearn_is_fitted__(self) -> bool:
        return True

    @property
    def feature_names_(self) -> tuple[str, ...]:
        return ()

    @property
    def version(self) -> str:
        return "table"

    def fit(self, X: Any, y: Any = None, times: Any = None, sample_weight: Any = None,
            **kwargs: Any) -> TableRanker:
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        table = self.scores or {}
        return np.array([table.get(c, self.default) for c in X["candidate_id"].to_list()],
                        dtype=float)


class RandomRanker(TableRanker):
    """Scores drawn at random per candidate id (stable for a given seed)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = seed

    def predict_proba(self, X: Any) -> np.ndarray:
        out = []
        for c in X["candidate_id"].to_list():
            rng = np.random.default_rng([self.seed, *c.encode()])
            out.append(rng.uniform(0.01, 0.99))
        return np.array(out, dtype=float)


# ------------------------------------------------------------------- a simulated community


@dataclass
class Simulated:
    """A simulated community in a store, split in time at ``cut`` (the engine's now).

    ``held_out`` are the missions created at or after ``cut``: what the engine is asked about.
    """

    store: graph.Store
    frames: graph.CommunityFrames
    cut: datetime
    feature_model: features.FeatureModel
    graph: graph.CommunityGraph
    held_out: list[dict]

    def engine(self, ranker: BaseRanker | None = None,
               config: matching.ShortlistConfig | None = None) -> matching.MatchingEngine:
        return matching.MatchingEngine(self.frames, self.feature_model,
                                       ranker or matching.PriorRanker(), now=self.cut,
                                       config=config, graph=self.graph)

    def training_set(self) -> matching.TrainingSet:
        """Rows of assignments made and measured before the cut."""
        labelled = matching.labelled_assignments(self.frames, until=self.cut).filter(
            pl.col("assigned_at") < self.cut)
        return matching.build_training_set(self.frames, self.feature_model, labelled,
                                           graph=self.graph)


def simulated(folder: Path, n_persons: int, n_missions: int, seed: int,
              cut_share: float = 0.7) -> Simulated:
    """Simulate, import into a SQLite store under ``folder`` and fit the feature model at the
    creation time of the mission at ``cut_share`` of the missions (by creation time)."""
    store = simulated_store(folder, n_persons, n_missions, seed)
    frames = graph.load_frames(store)
    missions = frames.missions.sort("created_at", "mission_id")
    cut = missions["created_at"][int(cut_share * missions.height)]
    fm = features.FeatureModel().fit(frames, cut)
    held = missions.filter(pl.col("created_at") >= cut)
    return Simulated(store=store, frames=frames, cut=cut, feature_model=fm,
                     graph=graph.community_graph_from_frames(frames),
                     held_out=list(held.iter_rows(named=True)))


def simulated_fixture(folder: str, *, name: str = "sim", **kwargs: Any) -> Any:
    """A module-scoped fixture ``name`` yielding :func:`simulated` (``kwargs``) in a fresh
    ``folder``, its store disposed of after the module."""
    @pytest.fixture(scope="module", name=name)
    def _fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulated]:
        s = simulated(tmp_path_factory.mktemp(folder), **kwargs)
        yield s
        s.store.dispose()

    return _fixture


# --------------------------------------------------------------------------- list checks


def strong_components(engine: matching.MatchingEngine, lists_members: list[list[str]]
                      ) -> list[int]:
    """Sizes (in candidates) of the connected components of a list, where two candidates are
    linked when a strong tie (weight >= the config's ``strong_tie``) joins their persons."""
    snap = engine.snapshot
    idx = [[snap.person_index[p] for p in members] for members in lists_members]
    n = len(idx)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            w = snap.ties[idx[i]][:, idx[j]].toarray()
            if (w >= engine.config.strong_tie).any():
                parent[root(i)] = root(j)
    sizes: dict[int, int] = defaultdict(int)
    for i in range(n):
        sizes[root(i)] += 1
    return sorted(sizes.values(), reverse=True)


def newcomer_ids(engine: matching.MatchingEngine) -> set[str]:
    """Persons with fewer verified outcomes than the config's newcomer threshold (recounted
    from the frames, not read from the engine's arrays)."""
    snap, t = engine.snapshot, engine.now
    outs = engine.frames.outcomes.filter((pl.col("status") == "verified")
                                         & (pl.col("measured_at") < t))
    direct = outs.filter(pl.col("person_id").is_not_null())["person_id"].to_list()
    via = (outs.filter(pl.col("group_id").is_not_null()).select("group_id")
           .join(engine.frames.group_members.filter(pl.col("joined_at") < t),
                 on="group_id")["person_id"].to_list())
    counts: dict[str, int] = defaultdict(int)
    for p in direct + via:
        counts[p] += 1
    return {p for p in snap.person_ids.tolist()
            if counts[p] < engine.config.newcomer_outcomes}


SIM_NOW = datetime.fromtimestamp(SNAPSHOT, UTC)


def open_city(root: Path, n_open: int = 40) -> graph.Store:
    """600 persons x 200 missions simulated and imported, plus ``n_open`` open missions
    (copies of the latest ones, with staggered windows starting after the simulator's
    snapshot time ``SIM_NOW``). Shared by the teams and allocation tests."""
    graph.simulate_bundle(root / "bundle", 600, 200, seed=0)
    store = graph.open_store(graph.sqlite_url(root / "store.db"))
    graph.import_bundle(store, root / "bundle", show_progress=False)
    templates = graph.load_frames(store).missions.sort("mission_id").tail(n_open)
    with store.session() as s:
        for i, r in enumerate(templates.iter_rows(named=True)):
            starts = SIM_NOW + timedelta(days=5 + (7 * i) % 40)
            s.add(graph.Mission(**{**r, "mission_id": f"MO{i:03d}", "status": "open",
                                   "created_at": SIM_NOW - timedelta(days=3),
                                   "starts_at": starts, "ends_at": starts + timedelta(days=60)}))
        graph.Store.bump_version(s)
    return store
