"""The hard rules (docs/simulator.md, rules 1-8): one focused test per filter on small
hand-made communities, and a property test over generated communities checking that no
ineligible person or group is ever returned, whatever the ranker's scores."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
import sqlalchemy.exc
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from support.matching_fixtures import (
    DAY,
    Community,
    ReferenceRules,
    TableRanker,
    community_from_frames,
    d,
    eligible_set,
    engine_of,
    mission_row,
    simulated_fixture,
)

from features import FEATURE_NAMES
from matching import MatchingEngine, MissionRules, eligible_candidates

NOW = datetime(2025, 1, 15, 12, tzinfo=UTC)  # noon: no generated time falls on it


def city() -> Community:
    """Three areas: A2 is 1.33 km from A1, A3 is 9.19 km from A1."""
    return (Community().add_area("A1", 48.85, 2.35).add_area("A2", 48.86, 2.36)
            .add_area("A3", 48.90, 2.45))


def persons_of(found: set[tuple[str, str]]) -> set[str]:
    return {cid for kind, cid in found if kind == "person"}


def groups_of(found: set[tuple[str, str]]) -> set[str]:
    return {cid for kind, cid in found if kind == "group"}


# ------------------------------------------------------------------------- rule by rule


def test_consent_to_be_matched():
    c = city().add_person("P_yes").add_person("P_no", consent_matching=False)
    c.add_mission("M1")
    engine = engine_of(c.frames(), NOW)
    assert persons_of(eligible_set(engine, c.mission("M1"))) == {"P_yes"}
    filters = engine.eligible(c.mission("M1")).filters_applied()
    assert filters["excluded_by_rule"]["consent_matching"] == 1


def test_a_person_who_joins_later_does_not_exist_yet():
    c = city().add_person("P_old").add_person("P_new", joined_at=d(2025, 2, 1))
    c.add_mission("M1")
    engine = engine_of(c.frames(), NOW)
    assert persons_of(eligible_set(engine, c.mission("M1"))) == {"P_old"}


# person -> (their vetting records, eligible for a "minors" mission Feb 1 - Mar 31 2025)
VETTING_CASES = {
    "no_record": ([], False),
    "valid_open_ended": ([dict(valid_from=d(2024, 1, 1))], True),
    "other_regime_only": ([dict(regime="vulnerable_adults")], False),
    "pending": ([dict(status="pending")], False),
    "expired": ([dict(status="expired")], False),
    "revoked": ([dict(status="revoked")], False),
    "refused": ([dict(status="refused")], False),
    "valid_from_after_start": ([dict(valid_from=d(2025, 2, 15))], False),
    "valid_from_at_start": ([dict(valid_from=d(2025, 2, 1))], True),
    "expires_inside_window": ([dict(expires_at=d(2025, 3, 15))], False),
    "expires_at_end": ([dict(expires_at=d(2025, 3, 31))], True),
    "expires_after_end": ([dict(expires_at=d(2026, 1, 1))], True),
    "expired_before_window": ([dict(valid_from=d(2023, 1, 1), expires_at=d(2024, 12, 31))],
                              False),
    "one_bad_one_good": ([dict(status="revoked", valid_from=d(2023, 6, 1)),
                          dict(valid_from=d(2024, 6, 1), expires_at=d(2027, 1, 1))], True),
    # Vetting is never inferred from anything else, lived experience least of all.
    "lived_experience_no_record": ([], False),
}


def test_vetting_regime_status_and_dates():
    c = city()
    for pid, (records, _) in VETTING_CASES.items():
        extra = (dict(lived_experience="care_leaver;single_parent",
                      consent_lived_experience=True)
                 if pid == "lived_experience_no_record" else {})
        c.add_person(pid, **extra)
        for r in records:
            c.add_vetting(pid, **r)
    c.add_mission("M_minors", vetting_regime="minors")
    c.add_mission("M_open")  # no regime: nobody needs a check
    engine = engine_of(c.frames(), NOW)
    expected = {pid for pid, (_, ok) in VETTING_CASES.items() if ok}
    assert persons_of(eligible_set(engine, c.mission("M_minors"))) == expected
    assert persons_of(eligible_set(engine, c.mission("M_open"))) == set(VETTING_CASES)
    # A regime nobody holds a check of excludes everyone.
    other = {**c.mission("M_minors"), "vetting_regime": "a_regime_without_records"}
    assert eligible_set(engine, other) == set()


def test_availability_is_minutes_per_day_times_days_per_week():
    c = city().add_person("P_120", availability_min_per_week=120)
    c.add_person("P_119", availability_min_per_week=119)
    c.add_person("P_150", availability_min_per_week=150)
    c.add_mission("M_60x2", minutes_per_day=60, days_per_week=2)
    c.add_mission("M_30x5", minutes_per_day=30, days_per_week=5)
    engine = engine_of(c.frames(), NOW)
    assert persons_of(eligible_set(engine, c.mission("M_60x2"))) == {"P_120", "P_150"}
    assert persons_of(eligible_set(engine, c.mission("M_30x5"))) == {"P_150"}
    # Retrieval's availability index cuts at the same place.
    assert persons_of(eligible_set(engine, c.mission("M_60x2"), use_retrieval=True)) == {
        "P_120", "P_150"}


def test_capacity_counts_holds_on_overlapping_windows_only():
    c = city()
    # M1 runs Feb 1 - Mar 31 2025; the others overlap it, touch it, or do not.
    c.add_mission("M1")
    c.add_mission("M_overlap", starts_at=d(2025, 1, 1), ends_at=d(2025, 2, 15))
    c.add_mission("M_touch", starts_at=d(2025, 3, 31), ends_at=d(2025, 4, 30))
    c.add_mission("M_after", starts_at=d(2025, 4, 1), ends_at=d(2025, 5, 31))
    c.add_mission("M_before", starts_at=d(2024, 11, 1), ends_at=d(2025, 1, 31))
    cases = {  # person -> (max_concurrent, [(mission, status, assigned_at)], eligible)
        "P_idle": (1, [], True),
        "P_busy": (1, [("M_overlap", "active", d(2025, 1, 2))], False),
        "P_touch": (1, [("M_touch", "accepted", d(2025, 1, 2))], False),
        "P_offered": (1, [("M_overlap", "offered", d(2025, 1, 2))], False),
        "P_completed_overlap": (1, [("M_overlap", "completed", d(2025, 1, 2))], False),
        "P_after": (1, [("M_after", "active", d(2025, 1, 2))], True),
        "P_before": (1, [("M_before", "completed", d(2024, 10, 1))], True),
        "P_declined": (1, [("M_overlap", "declined", d(2025, 1, 2))], True),
        "P_withdrawn": (1, [("M_overlap", "withdrawn", d(2025, 1, 2))], True),
        "P_not_yet": (1, [("M_overlap", "active", d(2025, 1, 20))], True),  # after now
        "P_two_of_one": (2, [("M_overlap", "active", d(2025, 1, 2))], True),
        "P_two_of_two": (2, [("M_overlap", "active", d(2025, 1, 2)),
                             ("M_touch", "active", d(2025, 1, 3))], False),
    }
    for pid, (cap, holds, _) in cases.items():
        c.add_person(pid, max_concurrent=cap)
        for i, (mid, status, at) in enumerate(holds):
            c.add_assignment(f"AS_{pid}_{i}", mid, person=pid, status=status, at=at)
    # A hold through a group counts for each member.
    c.add_person("P_via_group", max_concurrent=1).add_person("P_mate", max_concurrent=1)
    c.add_group("G_busy", ["P_via_group", "P_mate"])
    c.add_assignment("AS_group", "M_overlap", group="G_busy", at=d(2025, 1, 2))
    engine = engine_of(c.frames(), NOW)
    expected = {pid for pid, (_, _, ok) in cases.items() if ok}
    found = eligible_set(engine, c.mission("M1"))
    assert persons_of(found) == expected
    assert found == ReferenceRules(c, NOW).eligible(c.mission("M1"))


def test_once_per_mission_whatever_the_status():
    c = city().add_mission("M1", team_max=2)
    for pid, status, at in [("P_declined", "declined", d(2025, 1, 2)),
                            ("P_withdrawn", "withdrawn", d(2025, 1, 2)),
                            ("P_offered", "offered", d(2025, 1, 2)),
                            ("P_later", "offered", d(2025, 1, 20))]:  # after now: unknown
        c.add_person(pid, max_concurrent=3)
        c.add_assignment(f"AS_{pid}", "M1", person=pid, status=status, at=at)
    c.add_person("P_in_group", max_concurrent=3).add_person("P_mate", max_concurrent=3)
    c.add_group("G_declined", ["P_in_group", "P_mate"])
    c.add_assignment("AS_group", "M1", group="G_declined", status="declined",
                     at=d(2025, 1, 2))
    c.add_person("P_fresh").add_person("P_fresh2")
    c.add_group("G_fresh", ["P_fresh", "P_fresh2"])
    engine = engine_of(c.frames(), NOW)
    found = eligible_set(engine, c.mission("M1"))
    assert persons_of(found) == {"P_later", "P_fresh", "P_fresh2"}
    assert groups_of(found) == {"G_fresh"}


def test_distance_within_radius_and_unknown_area_fails_closed():
    c = city().add_person("P_A1", "A1").add_person("P_A2", "A2").add_person("P_A3", "A3")
    c.add_mission("M_2km", radius_km=2.0).add_mission("M_1km", radius_km=1.0)
    c.add_mission("M_anywhere", radius_km=None)
    engine = engine_of(c.frames(), NOW)
    for mid, expected in [("M_2km", {"P_A1", "P_A2"}), ("M_1km", {"P_A1"}),
                          ("M_anywhere", {"P_A1", "P_A2", "P_A3"})]:
        assert persons_of(eligible_set(engine, c.mission(mid))) == expected, mid
        assert persons_of(eligible_set(engine, c.mission(mid), use_retrieval=True)) \
            == expected, mid
    # A mission whose area the engine cannot place: no distance can be measured.
    lost = mission_row("M_lost", "A_unknown", radius_km=50.0)
    assert eligible_set(engine, lost) == set()
    assert eligible_set(engine, lost, use_retrieval=True) == set()
    assert engine.shortlist(mission=lost, k=5, seed=0).candidates == []


def test_team_size_for_persons_and_groups():
    c = city()
    for p in ["P1", "P2", "P3", "P4", "P5"]:
        c.add_person(p)
    c.add_group("G2", ["P1", "P2"]).add_group("G3", ["P3", "P4", "P5"])
    for lo, hi in [(1, 1), (1, 2), (2, 2), (2, 3), (3, 3), (3, 6)]:
        c.add_mission(f"M_{lo}_{hi}", team_min=lo, team_max=hi)
    engine = engine_of(c.frames(), NOW)
    everyone = {"P1", "P2", "P3", "P4", "P5"}
    expected = {(1, 1): (everyone, set()), (1, 2): (everyone, {"G2"}),
                (2, 2): (set(), {"G2"}), (2, 3): (set(), {"G2", "G3"}),
                (3, 3): (set(), {"G3"}), (3, 6): (set(), {"G3"})}
    for (lo, hi), (persons, groups) in expected.items():
        found = eligible_set(engine, c.mission(f"M_{lo}_{hi}"))
        assert persons_of(found) == persons, (lo, hi)
        assert groups_of(found) == groups, (lo, hi)
        served = engine.shortlist(f"M_{lo}_{hi}", k=10, seed=1).candidates
        assert all(lo <= len(x.members) <= hi for x in served), (lo, hi)


def test_engineer_exclusions_of_a_person_and_of_a_group():
    c = city().add_person("P1").add_person("P2").add_person("P3")
    c.add_group("G12", ["P1", "P2"]).add_group("G23", ["P2", "P3"])
    c.add_mission("M1", team_max=2)
    engine = engine_of(c.frames(), NOW)
    assert eligible_set(engine, c.mission("M1"), exclude=["P1"]) == {
        ("person", "P2"), ("person", "P3"), ("group", "G23")}
    assert eligible_set(engine, c.mission("M1"), exclude=["G23"]) == {
        ("person", "P1"), ("person", "P2"), ("person", "P3"), ("group", "G12")}
    # Whatever the scores: the ranker loves the excluded ones.
    engine.ranker = TableRanker({"P1": 0.99, "G12": 0.99, "G23": 0.98}, default=0.1)
    for seed in range(5):
        served = engine.shortlist("M1", k=5, exclude=["P1", "G23"], seed=seed).candidates
        ids = {x.candidate_id for x in served}
        members = {p for x in served for p in x.members}
        assert not ids & {"P1", "G12", "G23"} and "P1" not in members


# member -> what makes them fail a vetted ("minors"), 2 km mission where their mate passes
MEMBER_FAILURES = {
    "consent": dict(consent_matching=False),
    "availability": dict(availability_min_per_week=60),
    "vetting": dict(_vetting=False),
    "distance": dict(area_id="A3"),
    "capacity": dict(_busy=True, max_concurrent=1),
    "on_mission": dict(_on_mission=True, max_concurrent=3),
    "joined_later": dict(_joins_group=d(2025, 2, 1)),
    "not_in_community_yet": dict(joined_at=d(2025, 1, 20), _joins_group=d(2025, 1, 20)),
}


def test_a_group_is_excluded_when_one_member_fails():
    c = city().add_mission("M1", team_max=3, vetting_regime="minors", radius_km=2.0)
    c.add_mission("M_other", starts_at=d(2025, 1, 1), ends_at=d(2025, 2, 15))
    c.add_person("P_ok").add_vetting("P_ok").add_person("P_ok2", "A2").add_vetting("P_ok2")
    c.add_group("G_control", ["P_ok", "P_ok2"])
    for reason, spec in MEMBER_FAILURES.items():
        pid, spec = f"P_{reason}", dict(spec)
        vetted, busy = spec.pop("_vetting", True), spec.pop("_busy", False)
        on_mission, joins = spec.pop("_on_mission", False), spec.pop("_joins_group", None)
        c.add_person(pid, **spec)
        if vetted:
            c.add_vetting(pid)
        if busy:
            c.add_assignment(f"AS_{pid}", "M_other", person=pid, at=d(2025, 1, 2))
        if on_mission:
            c.add_assignment(f"AS_{pid}", "M1", person=pid, status="declined",
                             at=d(2025, 1, 2))
        # Three members: without the failing one, the other two would make a valid team.
        joined = {"P_ok": d(2024, 3, 1), "P_ok2": d(2024, 3, 1), pid: joins} if joins \
            else d(2024, 3, 1)
        c.add_group(f"G_{reason}", ["P_ok", "P_ok2", pid], joined_at=joined)
    engine = engine_of(c.frames(), NOW)
    rules = ReferenceRules(c, NOW)
    for reason in MEMBER_FAILURES:
        if reason not in ("joined_later", "not_in_community_yet"):
            assert rules.why_not(f"P_{reason}", c.mission("M1")) is not None, reason
    found = eligible_set(engine, c.mission("M1"))
    assert groups_of(found) == {"G_control"}
    assert {"P_ok", "P_ok2"} <= persons_of(found)
    assert found == rules.eligible(c.mission("M1"))
    excluded = engine.eligible(c.mission("M1")).filters_applied()["excluded_by_rule"]
    assert excluded["group_member_not_joined"] == 2


# ------------------------------------------------------------- lived experience and consent


def test_lived_experience_cannot_be_stored_without_consent(sqlite_store):
    c = city().add_person("P_no", lived_experience="drug_use", consent_lived_experience=False)
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        c.write(sqlite_store)


def test_lived_experience_without_consent_is_never_used_not_even_as_a_feature():
    """Tags of a person without consent_lived_experience, forced into the frames (the store
    refuses them), change no feature of anyone and no score."""
    c = city()
    c.add_person("P_consents", lived_experience="drug_use", consent_lived_experience=True)
    c.add_person("P_refuses")
    c.add_person("P_peer", "A2")
    c.add_tie("P_refuses", "P_peer", weight=0.9)
    c.add_mission("M_past", need_type="drug_outreach", starts_at=d(2024, 5, 1),
                  ends_at=d(2024, 6, 30))
    c.add_assignment("AS1", "M_past", person="P_refuses", at=d(2024, 4, 20),
                     status="completed")
    c.add_outcome("O1", "AS1", d(2024, 7, 1), True)
    c.add_mission("M_outreach", need_type="drug_outreach", title="Reach drug users",
                  description="Outreach to current drug users near the station")
    clean = c.frames()
    forged_persons = clean.persons.with_columns(
        pl.when(pl.col("person_id") == "P_refuses").then(pl.lit("drug_use;homelessness"))
        .otherwise(pl.col("lived_experience")).alias("lived_experience"))
    forged = replace(clean, persons=forged_persons)
    assert forged.persons.filter(pl.col("person_id") == "P_refuses")["lived_experience"][0]

    scored = []
    for frames in (clean, forged):
        engine = engine_of(frames, NOW)
        m = engine.mission("M_outreach")
        e = engine.eligible(m, use_retrieval=False)
        scored.append(engine.score(m, e.person_idx, e.group_ids).sort("candidate_id"))
        assert engine.snapshot.le_tags[engine.snapshot.person_index["P_refuses"]] == []
    a, b = scored
    assert a["candidate_id"].to_list() == ["P_consents", "P_peer", "P_refuses"]
    for name in [*FEATURE_NAMES, "p_success"]:
        np.testing.assert_array_equal(a[name].to_numpy(), b[name].to_numpy(), err_msg=name)
    refuses = a.filter(pl.col("candidate_id") == "P_refuses").row(0, named=True)
    assert refuses["le_fit"] == 0.0
    # ... while the consented tags of P_consents are used: the test can tell.
    assert a.filter(pl.col("candidate_id") == "P_consents")["le_fit"][0] > 0


def test_an_empty_community_can_be_served():
    c = city().add_person("P_later", joined_at=d(2025, 6, 1)).add_mission("M1")
    engine = engine_of(c.frames(), NOW)
    assert eligible_set(engine, c.mission("M1")) == set()
    assert engine.shortlist("M1", k=3, seed=0).candidates == []


# --------------------------------------------------------------------- the property test

T0 = NOW
REGIMES = ["minors", "vulnerable_adults"]
STATUSES = ["valid"] * 6 + ["pending", "expired", "revoked", "refused"]
ASSIGNMENT_STATUSES = ["offered", "accepted", "declined", "active", "completed", "withdrawn"]


def days(draw, lo: int, hi: int) -> datetime:
    """A midnight ``lo..hi`` days from T0's date (never T0 itself, which is at noon)."""
    return d(2025, 1, 15) + timedelta(days=draw(st.integers(lo, hi)))


@st.composite
def communities(draw) -> tuple[Community, list[str], int]:
    """A small community and its missions, dense in the cases the rules decide on: vetting
    records that start or expire near a mission's window, assignments on overlapping
    missions, group members joining around T0."""
    c = Community()
    n_areas = draw(st.integers(1, 4))
    for a in range(n_areas):
        c.add_area(f"A{a}", draw(st.floats(48.80, 48.95)), draw(st.floats(2.25, 2.45)))
    areas = [f"A{a}" for a in range(n_areas)]

    mids = []
    for i in range(draw(st.integers(3, 6))):
        start = days(draw, -120, 150)
        # The first mission is lenient (no check, no radius, any team, 30 min a week), so
        # that eligible persons and groups are common and lists have a choice to make.
        lenient = i == 0
        lo = 1 if lenient else draw(st.sampled_from([1, 1, 1, 2, 3]))
        c.add_mission(
            f"M{i}", draw(st.sampled_from(areas)), starts_at=start,
            ends_at=start + timedelta(days=draw(st.integers(0, 120))), team_min=lo,
            team_max=3 if lenient else lo + draw(st.sampled_from([0, 1, 1, 2])),
            minutes_per_day=30 if lenient else draw(st.sampled_from([30, 60])),
            days_per_week=1 if lenient else draw(st.integers(1, 4)),
            vetting_regime=None if lenient else draw(st.sampled_from([None, None, *REGIMES])),
            radius_km=None if lenient else draw(st.one_of(st.none(), st.floats(0.5, 15.0))),
            need_type=draw(st.sampled_from(["drug_outreach", "school_absenteeism"])))
        mids.append(f"M{i}")

    pids = [f"P{i}" for i in range(draw(st.integers(4, 12)))]
    for pid in pids:
        consent_le = draw(st.booleans())
        # P0 exists at T0: a community of nobody is test_an_empty_community_can_be_served's
        c.add_person(
            pid, draw(st.sampled_from(areas)),
            joined_at=days(draw, -400, -1 if pid == "P0" else 20),
            availability_min_per_week=draw(st.sampled_from([0, *[60, 120, 150, 240, 600] * 2])),
            max_concurrent=draw(st.sampled_from([1, 1, 2, 3])),
            consent_matching=draw(st.sampled_from([True] * 7 + [False])),
            consent_lived_experience=consent_le,
            lived_experience=("drug_use" if consent_le and draw(st.booleans()) else None))
        seen = set()
        for _ in range(draw(st.sampled_from([0, 1, 1, 2, 3]))):
            # A check dated around some mission's window: starting a little before or after
            # its start, expiring a little before or after its end, or never.
            m = c.mission(draw(st.sampled_from(mids)))
            regime = m["vetting_regime"] or draw(st.sampled_from(REGIMES))
            vf = m["starts_at"] + timedelta(days=draw(st.integers(-40, 10)))
            if (regime, vf) in seen:
                continue
            seen.add((regime, vf))
            expires = (None if draw(st.sampled_from([False, False, True])) else
                       max(vf + DAY, m["ends_at"] + timedelta(days=draw(st.integers(-15, 3)))))
            c.add_vetting(pid, regime, draw(st.sampled_from(STATUSES)), vf, expires)

    for _ in range(draw(st.integers(0, 5))):
        a, b = draw(st.lists(st.sampled_from(pids), min_size=2, max_size=2, unique=True))
        if (min(a, b), max(a, b)) not in {(t["person_a"], t["person_b"]) for t in c.ties}:
            c.add_tie(a, b, weight=draw(st.sampled_from([0.3, 0.6, 1.0])))
    gids = []
    for g in range(draw(st.integers(1, 4))):
        members = draw(st.lists(st.sampled_from(pids), min_size=2, max_size=min(3, len(pids)),
                                unique=True))
        # Now and then a member joins the group only after T0 (rule 8).
        joined = {p: days(draw, 1, 30) if draw(st.sampled_from([False] * 5 + [True]))
                  else days(draw, -300, -1) for p in members}
        c.add_group(f"G{g}", members, joined_at=joined, created_at=d(2023, 1, 1))
        gids.append(f"G{g}")

    for i in range(draw(st.integers(0, 10))):
        by_group = draw(st.booleans())
        c.add_assignment(
            f"AS{i}", draw(st.sampled_from(mids)),
            person=None if by_group else draw(st.sampled_from(pids)),
            group=draw(st.sampled_from(gids)) if by_group else None,
            at=days(draw, -60, 10), status=draw(st.sampled_from(ASSIGNMENT_STATUSES)))
    exclude = draw(st.lists(st.sampled_from(pids + gids), max_size=2, unique=True))
    return c, exclude, draw(st.integers(0, 2**16))


# No shrinking: an example costs a store and an engine (0.1-0.5 s), and Hypothesis would
# spend its five-minute shrinking budget on a failure. The examples are small as drawn.
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(communities())
def test_no_ineligible_candidate_is_ever_returned_whatever_the_scores(case):
    c, exclude, seed = case
    ranker = TableRanker()
    engine = engine_of(c.frames(), T0, ranker=ranker)
    rules = ReferenceRules(c, T0)
    rng = np.random.default_rng(seed)
    everyone = [("person", p["person_id"]) for p in c.persons] + [
        ("group", g["group_id"]) for g in c.groups]
    seen: set[str] = set()
    for m in c.missions:
        allowed = rules.eligible(m, exclude)
        # The engine's eligibility is exactly the rules' (none missing, none extra) ...
        assert eligible_set(engine, m, exclude) == allowed, m["mission_id"]
        assert eligible_set(engine, m, exclude, use_retrieval=True) <= allowed
        # ... and checking only some persons gives the same answer about them.
        within = rng.choice(len(engine.snapshot.person_ids),
                            size=int(rng.integers(0, len(engine.snapshot.person_ids) + 1)),
                            replace=False)
        assert_pool_restricted(engine, MissionRules.of(m), exclude, within)
        # ... and a ranker that scores every ineligible candidate highest changes nothing.
        ranker.scores = {cid: (0.999 if (kind, cid) not in allowed else rng.uniform(0.01, 0.9))
                         for kind, cid in everyone}
        k = int(rng.integers(1, 6))
        served = engine.shortlist(m["mission_id"], k=k, exclude=exclude,
                                  seed=int(rng.integers(2**16))).candidates
        assert len(served) <= k
        assert {(x.kind, x.candidate_id) for x in served} <= allowed
        persons = [p for x in served for p in x.members]
        assert len(persons) == len(set(persons))
        assert all(0 < x.propensity <= 1 for x in served)
        assert all(m["team_min"] <= len(x.members) <= m["team_max"] for x in served)
        if allowed:
            assert served, "eligible candidates exist but the list is empty"
        seen |= {f"a mission with an eligible {kind}" for kind, _ in allowed}
        if any(x.kind == "group" for x in served):
            seen.add("a group listed")
    for what in sorted(seen):
        event(what)


# ------------------------------------------------- checking a pool, not the whole community


def assert_pool_restricted(engine: MatchingEngine, rules: MissionRules, exclude: list[str],
                           within: np.ndarray) -> None:
    """``eligible_candidates(within=...)`` is the whole community's answer restricted to
    ``within`` and to the groups with a member in it; with ``group_ids``, to those groups."""
    snap = engine.snapshot
    full = eligible_candidates(snap, engine.vetting, rules, exclude)
    part = eligible_candidates(snap, engine.vetting, rules, exclude, within=within)
    inside = set(np.asarray(within).tolist())
    assert part.person_idx.tolist() == sorted(set(full.person_idx.tolist()) & inside)
    touched = {g for g, members in snap.group_members.items() if inside & set(members.tolist())}
    assert part.group_ids == sorted(set(full.group_ids) & touched)
    # Every person checked is counted once: eligible, or removed by one rule.
    person_rules = {k: v for k, v in part.excluded.items() if not k.startswith("group_")}
    assert sum(person_rules.values()) + len(part.person_idx) == len(inside)
    # Groups asked about by id: the same answer for them, whoever their members are.
    asked = sorted(snap.group_members)[::3] + ["G_not_a_group"]
    by_id = eligible_candidates(snap, engine.vetting, rules, exclude, within=within[:0],
                                group_ids=asked)
    assert by_id.group_ids == sorted(set(full.group_ids) & set(asked))
    assert by_id.person_idx.size == 0


sim = simulated_fixture("rules", n_persons=600, n_missions=150, seed=5)


def test_checking_a_pool_gives_the_whole_communitys_answer_about_it(sim):
    """Random missions (any area, window, team size, regime, radius) and exclusions over a
    simulated community: the rules applied to retrieval's pool, to random persons or to a few
    groups' members give exactly the whole community's answer about them; and the whole
    community's answer is the reference rules' (docs/simulator.md, rules 1-8)."""
    engine = sim.engine()
    snap = engine.snapshot
    reference = ReferenceRules(community_from_frames(sim.frames), sim.cut)
    missions = sim.frames.missions.to_dicts()
    areas = sim.frames.areas["area_id"].to_list() + ["A_unknown"]
    groups = sorted(snap.group_members)
    rng = np.random.default_rng(7)
    found = {"persons": 0, "groups": 0, "member_fails": 0}
    for i in range(40):
        base = missions[int(rng.integers(len(missions)))]
        lo = int(rng.choice([1, 1, 2, 3]))
        start = base["starts_at"] + timedelta(days=int(rng.integers(-60, 60)))
        m = {**base, "mission_id": base["mission_id"] if i % 4 else f"M_new_{i}",
             "area_id": str(rng.choice(areas)) if i % 5 == 0 else base["area_id"],
             "starts_at": start, "ends_at": start + timedelta(days=int(rng.integers(0, 90))),
             "team_min": lo, "team_max": lo + int(rng.choice([0, 1, 2])),
             "minutes_per_day": int(rng.choice([30, 60, 120])),
             "days_per_week": int(rng.integers(1, 4)),
             "vetting_regime": rng.choice([None, None, "minors", "vulnerable_adults"]),
             "radius_km": None if rng.random() < 0.4 else float(rng.uniform(0.5, 8.0))}
        pool_members = [p for g in rng.choice(groups, size=3, replace=False)
                        for p in snap.person_ids[snap.group_members[g]].tolist()]
        exclude = (rng.choice(snap.person_ids, size=int(rng.integers(0, 4))).tolist()
                   + rng.choice(groups, size=int(rng.integers(0, 3))).tolist()
                   + pool_members[: int(rng.integers(0, 2))])
        rules = MissionRules.of(m)
        full = eligible_candidates(snap, engine.vetting, rules, exclude)
        if i < 10:
            assert {("person", p) for p in snap.person_ids[full.person_idx].tolist()} | {
                ("group", g) for g in full.group_ids} == reference.eligible(m, exclude), i
        pool = engine.retrieval.pool(rules.area_id, rules.radius_km, rules.weekly_minutes)
        random_persons = rng.choice(len(snap.person_ids), size=int(rng.integers(1, 400)))
        members = np.array([snap.person_index[p] for p in pool_members])
        for within in (pool, random_persons, members):
            assert_pool_restricted(engine, rules, exclude, within)
        found["persons"] += len(full.person_idx)
        found["groups"] += len(full.group_ids)
        found["member_fails"] += full.excluded["group_member_ineligible"]
    # The missions drawn did decide something: eligible persons and groups, failing members.
    assert all(v > 0 for v in found.values()), found
