"""The synthetic community generator: determinism, bundle invariants, eligibility, signal.

The eligibility rules are re-implemented here from the bundle alone (docs/simulator.md), so
that the simulator's own bookkeeping is checked against what an engine reading the bundle
would conclude.
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import UTC, datetime

import polars as pl
import pytest

from graph import (
    BUNDLE_FILES,
    PayRule,
    builtin_vocabulary,
    payout_for,
    simulate_bundle,
    success_for,
)
from graph import simulate_community as simulate
from graph._simulate import (
    HELD_OUT_SHARE,
    MODEL_VERSION,
    POLICY,
    REQUESTED_BY,
    SNAPSHOT,
    START,
)
from graph._vocabulary import NEED_TYPES

N_PERSONS, N_MISSIONS, SEED = 300, 120, 7
DAY = 86_400


@pytest.fixture(scope="module")
def frames() -> dict[str, pl.DataFrame]:
    return simulate(N_PERSONS, N_MISSIONS, seed=SEED)


def _km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance on a 6371 km sphere (written out again: the rule, not the code)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    h = (math.sin((p2 - p1) / 2) ** 2
         + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2)
    return 2 * 6371.0 * math.asin(math.sqrt(min(h, 1.0)))


def _epoch(df: pl.DataFrame, *cols: str) -> pl.DataFrame:
    return df.with_columns([pl.col(c).dt.epoch("s") for c in cols])


class Rules:
    """The hard eligibility rules of docs/simulator.md, evaluated on bundle frames."""

    def __init__(self, f: dict[str, pl.DataFrame]) -> None:
        self.areas = {r["area_id"]: (r["lat"], r["lon"]) for r in f["areas"].iter_rows(named=True)}
        self.persons = {
            r["person_id"]: r for r in _epoch(f["persons"], "joined_at").iter_rows(named=True)
        }
        self.missions = {
            r["mission_id"]: r
            for r in _epoch(f["missions"], "created_at", "starts_at", "ends_at").iter_rows(
                named=True)
        }
        self.valid = defaultdict(list)
        for r in _epoch(f["vetting"], "valid_from", "expires_at").iter_rows(named=True):
            if r["status"] == "valid":
                self.valid[(r["person_id"], r["regime"])].append(
                    (r["valid_from"], r["expires_at"]))
        self.members = defaultdict(list)
        for r in _epoch(f["group_members"], "joined_at").iter_rows(named=True):
            self.members[r["group_id"]].append((r["person_id"], r["joined_at"]))
        # every assignment, per person it holds (directly or through a group)
        self.holds = defaultdict(list)
        for r in _epoch(f["assignments"], "assigned_at").iter_rows(named=True):
            m = self.missions[r["mission_id"]]
            who = ([r["person_id"]] if r["person_id"] else
                   [p for p, _ in self.members[r["group_id"]]])
            for p in who:
                self.holds[p].append((r["assigned_at"], r["status"], r["mission_id"],
                                      m["starts_at"], m["ends_at"]))

    def person_ok(self, pid: str, mid: str, t: int) -> bool:
        p, m = self.persons[pid], self.missions[mid]
        if not p["consent_matching"] or p["joined_at"] > t:
            return False
        if p["availability_min_per_week"] < m["minutes_per_day"] * m["days_per_week"]:
            return False
        if m["vetting_regime"] is not None and not any(
            vf <= m["starts_at"] and (ex is None or ex >= m["ends_at"])
            for vf, ex in self.valid[(pid, m["vetting_regime"])]
        ):
            return False
        if m["radius_km"] is not None:
            (la1, lo1), (la2, lo2) = self.areas[p["area_id"]], self.areas[m["area_id"]]
            if _km(la1, lo1, la2, lo2) > m["radius_km"]:
                return False
        busy = 0
        for at, status, other, start, end in self.holds[pid]:
            if at >= t:
                continue
            if other == mid:
                return False  # never the same person twice on one mission
            if status not in ("declined", "withdrawn") and start <= m["ends_at"] \
                    and end >= m["starts_at"]:
                busy += 1
        return busy < p["max_concurrent"]

    def group_ok(self, gid: str, mid: str, t: int) -> bool:
        m, members = self.missions[mid], self.members[gid]
        if not m["team_min"] <= len(members) <= m["team_max"]:
            return False
        return all(j <= t and self.person_ok(p, mid, t) for p, j in members)

    def ok(self, person: str | None, group: str | None, mid: str, t: int) -> bool:
        if person is not None:
            return self.missions[mid]["team_min"] == 1 and self.person_ok(person, mid, t)
        return self.group_ok(group, mid, t)


@pytest.fixture(scope="module")
def rules(frames) -> Rules:
    return Rules(frames)


def _held_out(missions: pl.DataFrame) -> list[str]:
    k = math.ceil(HELD_OUT_SHARE * missions.height)
    return missions.sort(["created_at", "mission_id"]).tail(k)["mission_id"].to_list()


# --- determinism ------------------------------------------------------------------------------
def test_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    a = simulate_bundle(tmp_path / "a", N_PERSONS, N_MISSIONS, seed=SEED)
    b = simulate_bundle(tmp_path / "b", N_PERSONS, N_MISSIONS, seed=SEED)
    c = simulate_bundle(tmp_path / "c", N_PERSONS, N_MISSIONS, seed=SEED + 1)
    assert [p.name for p in a] == [p.name for p in b]
    for pa, pb in zip(a, b, strict=True):
        assert pa.read_bytes() == pb.read_bytes(), pa.name
    differs = [pa.name for pa, pc in zip(a, c, strict=True) if pa.read_bytes() != pc.read_bytes()]
    assert {"persons.csv", "ties.csv", "missions.csv", "outcomes.csv", "truth.csv"} <= set(differs)


def test_writes_every_file_of_the_spec_in_both_formats(tmp_path, frames):
    paths = simulate_bundle(tmp_path / "pq", 60, 20, seed=1, fmt="parquet")
    names = {p.name for p in paths}
    expected = {f"{s.name}.parquet" for s in BUNDLE_FILES if s.required} | {"truth.parquet"}
    assert names == expected  # no vocabulary file: only built-in values are used
    for spec in BUNDLE_FILES:
        if spec.name in frames:
            assert set(spec.column_names) - set(frames[spec.name].columns) <= {
                c.name for c in spec.columns if c.optional}
    back = pl.read_parquet(tmp_path / "pq" / "persons.parquet")
    assert back.height == 60


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        simulate(5, 10)
    with pytest.raises(ValueError):
        simulate(100, 10, seed=-1)


# --- the city and its people ------------------------------------------------------------------
def test_areas_form_a_connected_planar_like_city(frames):
    areas, links = frames["areas"], frames["area_links"]
    assert areas.height >= 8
    assert (links["area_a"] < links["area_b"]).all()
    assert links.height >= areas.height - 1
    assert areas["lat"].is_between(45.6, 45.9).all() and areas["lon"].is_between(4.6, 5.1).all()
    nbrs = defaultdict(set)
    for a, b in links.iter_rows():
        nbrs[a].add(b)
        nbrs[b].add(a)
    seen, todo = set(), [areas["area_id"][0]]
    while todo:
        a = todo.pop()
        if a not in seen:
            seen.add(a)
            todo.extend(sorted(nbrs[a] - seen))
    assert seen == set(areas["area_id"])


def test_persons_consent_and_mixed_skills(frames):
    p = frames["persons"]
    vocab = builtin_vocabulary()
    no_consent = p.filter(~pl.col("consent_lived_experience"))
    assert no_consent["lived_experience"].null_count() == no_consent.height
    assert 0.6 <= p["consent_lived_experience"].mean() <= 0.8
    assert 0.0 < (~p["consent_matching"]).mean() <= 0.1
    assert p["skills"].null_count() == 0  # lived experience is never all a person has
    with_le = p.filter(pl.col("lived_experience").is_not_null())
    assert 0 < with_le.height < p.filter("consent_lived_experience").height
    for tags, kind in ((p["skills"], "skill"), (with_le["lived_experience"], "lived_experience")):
        for s in tags.to_list():
            parts = s.split(";")
            assert parts == sorted(parts) and all(vocab.allows(kind, t) for t in parts)
    assert (p["joined_at"] < datetime.fromtimestamp(START, UTC)).all()
    assert (p["availability_min_per_week"] >= 0).all() and (p["max_concurrent"] >= 1).all()


def test_lived_experience_depends_on_the_area():
    p = simulate(3000, 30, seed=2)["persons"].filter("consent_lived_experience")
    rates = (p.group_by("area_id")
             .agg(pl.col("lived_experience").fill_null("").str.contains("drug_use").mean()))
    assert rates["lived_experience"].max() > 2 * rates["lived_experience"].min()


def test_ties_are_ordered_unique_weighted_and_dated(frames):
    t, p = frames["ties"], frames["persons"]
    assert (t["person_a"] < t["person_b"]).all()
    assert t.select("person_a", "person_b", "kind").is_unique().all()
    assert t["weight"].is_between(0, 1, closed="right").all()
    assert 5 <= t.height / p.height <= 10
    assert set(t["kind"]) <= set(builtin_vocabulary().values["tie_kind"])
    joined = dict(p.select("person_id", "joined_at").iter_rows())
    for a, b, created in t.select("person_a", "person_b", "created_at").iter_rows():
        assert created >= max(joined[a], joined[b])
    # homophily: far more ties inside an area than two random persons would give
    area = dict(p.select("person_id", "area_id").iter_rows())
    same = sum(area[a] == area[b] for a, b in t.select("person_a", "person_b").iter_rows())
    n_areas = frames["areas"].height
    assert same / t.height > 3 / n_areas


def test_groups_have_2_to_6_members_who_joined_after_creation(frames):
    g, gm, t = frames["groups"], frames["group_members"], frames["ties"]
    sizes = gm.group_by("group_id").len()
    assert sizes["len"].is_between(2, 6).all() and sizes.height == g.height
    j = gm.join(g, on="group_id")
    assert (j["joined_at"] >= j["created_at"]).all()
    # drawn from ties: every group holds at least one tied pair
    tied = {(a, b) for a, b in t.select("person_a", "person_b").iter_rows()}
    for _, members in gm.group_by("group_id", maintain_order=True):
        ps = sorted(members["person_id"])
        assert any((a, b) in tied for i, a in enumerate(ps) for b in ps[i + 1:])


def test_vetting_records(frames):
    v = frames["vetting"]
    assert {"valid", "expired", "pending"} <= set(v["status"])
    assert set(v["regime"]) == {"minors", "vulnerable_adults"}
    dated = v.filter(pl.col("expires_at").is_not_null())
    assert (dated["expires_at"] > dated["valid_from"]).all()
    assert 0.1 < v["person_id"].n_unique() / frames["persons"].height < 0.7


# --- missions and the logging policy ----------------------------------------------------------
def test_missions_cover_the_taxonomy_with_consistent_pay_rules(frames):
    m = frames["missions"]
    assert set(m["need_type"]) == set(NEED_TYPES)
    assert (m["team_min"] <= m["team_max"]).all() and (m["starts_at"] <= m["ends_at"]).all()
    assert (m["team_max"] == 1).mean() > 0.3 and (m["team_min"] >= 2).any()
    per_unit = m.filter(pl.col("pay_rule") == "per_unit")
    other = m.filter(pl.col("pay_rule") != "per_unit")
    assert per_unit["unit_price"].is_not_null().all() and per_unit["fee"].is_null().all()
    assert other["fee"].is_not_null().all() and other["unit_price"].is_null().all()
    assert set(other["pay_rule"]) == {"threshold", "linear"}
    assert m["contract_cap"].is_not_null().all()
    assert 0.8 < m["radius_km"].is_not_null().mean() < 1.0
    school = m.filter(pl.col("need_type").is_in(["school_absenteeism", "homework_support"]))
    assert set(school["vetting_regime"].drop_nulls()) == {"minors"}
    care = m.filter(pl.col("need_type").is_in(["elderly_isolation", "homeless_outreach"]))
    assert set(care["vetting_regime"].drop_nulls()) == {"vulnerable_adults"}
    start = datetime.fromtimestamp(START, UTC)
    assert m["created_at"].min() >= start
    assert (m["created_at"].max() - start).days < 550
    closed = m["ends_at"] < datetime.fromtimestamp(SNAPSHOT, UTC)
    assert (closed == (m["status"] == "closed")).all()
    assert 0.0 < 1 - closed.mean() < 0.15  # the last few % are still running


def test_shortlists_log_ranks_scores_and_propensities(frames):
    s, sc = frames["shortlists"], frames["shortlist_candidates"]
    assert set(s["model_version"]) == {MODEL_VERSION} and set(s["policy"]) == {POLICY}
    assert set(s["requested_by"]) == {REQUESTED_BY}
    assert sc["propensity"].is_between(0, 1, closed="right").all()
    assert (sc["person_id"].is_null() != sc["group_id"].is_null()).all()
    ranks = sc.group_by("shortlist_id").agg(pl.col("rank").sort(), pl.len())
    for r, n in ranks.select("rank", "len").iter_rows():
        assert r == list(range(1, n + 1))
    # a re-ask: some missions got a second list
    assert s.group_by("mission_id").len()["len"].max() >= 2
    # exploration: propensities below one appear, and the top of a list is not always a sure bet
    assert (sc["propensity"] < 0.5).mean() > 0.2


def test_assignments_come_from_their_shortlist_or_by_hand(frames):
    a, sc, s = frames["assignments"], frames["shortlist_candidates"], frames["shortlists"]
    assert (a["person_id"].is_null() != a["group_id"].is_null()).all()
    assert (a["shortlist_id"].is_null() == a["propensity"].is_null()).all()
    assert 0.0 < a["shortlist_id"].is_null().mean() < 0.12
    assert a["propensity"].drop_nulls().is_between(0, 1, closed="right").all()
    logged = a.filter(pl.col("shortlist_id").is_not_null())
    j = logged.join(sc, on=["shortlist_id", "person_id", "group_id"], how="left",
                    nulls_equal=True, suffix="_sc")
    assert j["rank"].null_count() == 0  # every logged assignment is on its list
    j = logged.join(s, on="shortlist_id", suffix="_sl")
    assert (j["mission_id"] == j["mission_id_sl"]).all()
    assert (j["assigned_at"] >= j["served_at"]).all()
    assert {"completed", "declined", "withdrawn"} <= set(a["status"])
    assert a["group_id"].is_not_null().any()


def test_nobody_twice_on_a_mission(frames):
    a, gm = frames["assignments"], frames["group_members"]
    direct = a.filter(pl.col("person_id").is_not_null()).select("mission_id", "person_id")
    via = (a.filter(pl.col("group_id").is_not_null()).drop("person_id")
           .join(gm, on="group_id").select("mission_id", "person_id"))
    both = pl.concat([direct, via])
    assert both.is_unique().all()


def test_nobody_listed_or_assigned_who_is_ineligible(frames, rules):
    s = _epoch(frames["shortlists"], "served_at")
    served = dict(s.select("shortlist_id", "served_at").iter_rows())
    mission_of = dict(s.select("shortlist_id", "mission_id").iter_rows())
    for sl, person, group in frames["shortlist_candidates"].select(
            "shortlist_id", "person_id", "group_id").iter_rows():
        assert rules.ok(person, group, mission_of[sl], served[sl]), (sl, person, group)
    a = _epoch(frames["assignments"], "assigned_at")
    for mid, person, group, sl, at in a.select(
            "mission_id", "person_id", "group_id", "shortlist_id", "assigned_at").iter_rows():
        t = at if sl is None else served[sl]
        assert rules.ok(person, group, mid, t), (mid, person, group)


def test_truth_covers_every_eligible_candidate_of_held_out_missions(frames, rules):
    truth, a = frames["truth"], frames["assignments"]
    assert truth["p_success"].is_between(0, 1).all()
    keys = ["mission_id", "person_id", "group_id"]
    assert a.join(truth, on=keys, how="anti", nulls_equal=True).height == 0
    first = (_epoch(frames["shortlists"], "served_at").group_by("mission_id")
             .agg(pl.col("served_at").min()))
    first = dict(first.iter_rows())
    held_out = _held_out(frames["missions"])
    assert sum(m in first for m in held_out) >= 0.8 * len(held_out)
    in_truth = defaultdict(set)
    for mid, person, group in truth.select(keys).iter_rows():
        in_truth[mid].add((person, group))
    assigned = defaultdict(set)
    for mid, person, group in a.select(keys).iter_rows():
        assigned[mid].add((person, group))
    candidates = [(p, None) for p in rules.persons] + [(None, g) for g in rules.members]
    checked = 0
    for mid in held_out:
        if mid not in first:
            continue
        eligible = {c for c in candidates if rules.ok(*c, mid, first[mid])}
        assert eligible <= in_truth[mid], mid
        assert in_truth[mid] <= eligible | assigned[mid], mid
        checked += len(eligible)
    assert checked > 0
    # earlier missions: only their assigned pairs
    early = truth.filter(~pl.col("mission_id").is_in(held_out))
    assert early.join(a, on=keys, how="anti", nulls_equal=True).height == 0


# --- outcomes ---------------------------------------------------------------------------------
def test_outcomes_follow_the_pay_rules(frames):
    o, a, m = frames["outcomes"], frames["assignments"], frames["missions"]
    j = o.join(a.select("assignment_id", "mission_id", "status"), on="assignment_id",
               suffix="_a").join(m, on="mission_id", suffix="_m")
    assert set(j["status_a"]) == {"completed"}  # declined and withdrawn have none
    assert (j["measured_at"] >= j["starts_at"]).all()
    assert j.select(pl.col("measured_at") <= pl.col("ends_at") + pl.duration(days=14))[
        "measured_at"].all()
    assert (j["measured_at"] < datetime.fromtimestamp(SNAPSHOT, UTC)).all()
    assert 0.8 < (o["status"] == "verified").mean() < 1.0
    assert o.filter(pl.col("status") != "verified")["payout"].null_count() == o.filter(
        pl.col("status") != "verified").height
    per_unit = j.filter(pl.col("pay_rule") == "per_unit").group_by("assignment_id").len()
    assert per_unit["len"].max() >= 2  # one outcome per unit placed
    assert j.filter(pl.col("pay_rule") != "per_unit").group_by("assignment_id").len()[
        "len"].max() == 1
    paid: dict[str, float] = defaultdict(float)
    capped = 0
    for r in j.sort(["measured_at", "outcome_id"]).iter_rows(named=True):
        rule = PayRule(r["pay_rule"], r["direction"], r["baseline"], r["target"],
                       unit_price=r["unit_price"], fee=r["fee"], contract_cap=r["contract_cap"])
        assert r["success"] == success_for(rule, r["value"]), r["outcome_id"]
        if r["status"] == "verified":
            expected = payout_for(rule, r["value"], paid[r["mission_id"]])
            uncapped = payout_for(PayRule(**{**rule.__dict__, "contract_cap": None}), r["value"])
            capped += expected < uncapped
            assert r["payout"] == pytest.approx(expected, abs=0.005), r["outcome_id"]
            paid[r["mission_id"]] += expected
    assert capped > 0  # the contract cap binds somewhere
    assert 0.2 < j.group_by("assignment_id").agg(pl.col("success").any())["success"].mean() < 0.8


def test_outcomes_are_drawn_from_the_truth():
    f = simulate(1500, 400, seed=5)
    o, a, t = f["outcomes"], f["assignments"], f["truth"]
    per = (o.group_by("assignment_id").agg(pl.col("success").any())
           .join(a, on="assignment_id")
           .join(t, on=["mission_id", "person_id", "group_id"], nulls_equal=True))
    low = per.filter(pl.col("p_success") < 0.25)["success"].mean()
    high = per.filter(pl.col("p_success") > 0.5)["success"].mean()
    assert high > low + 0.3
    assert abs(per["success"].mean() - per["p_success"].mean()) < 0.05


def test_the_oracle_beats_random_twice_on_held_out_missions():
    f = simulate(1200, 250, seed=11)
    held_out = _held_out(f["missions"])
    pools = f["truth"].filter(pl.col("mission_id").is_in(held_out)).group_by("mission_id").agg(
        pl.col("p_success").sort(descending=True).head(10).sum().alias("oracle"),
        (pl.col("p_success").mean() * pl.min_horizontal(pl.len(), 10)).alias("random"))
    assert pools.height >= 0.8 * len(held_out)
    assert pools["oracle"].sum() >= 2 * pools["random"].sum()
