"""A tiny hand-made community whose every feature value can be worked out by hand."""

from __future__ import annotations

from datetime import UTC, datetime

from graph import (
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


def d(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


T = d(2025, 8, 1)  # the decision time of the target mission


def _mission(mid: str, need: str, area: str, created: datetime, **kw) -> Mission:
    base = dict(
        mission_id=mid, client_id="C1", need_type=need, area_id=area, created_at=created,
        starts_at=created, ends_at=d(created.year, created.month + 2 if created.month <= 10
                                     else 12, 28),
        status="closed", title="Halve absenteeism in the school",
        description="Meet the families of absent pupils and bring them back to school",
        metric="absence rate", direction="decrease", baseline=0.2, target=0.1,
        pay_rule="threshold", unit_price=None, fee=1000.0, contract_cap=1000.0, team_min=1,
        team_max=2, minutes_per_day=60, days_per_week=2, vetting_regime=None, radius_km=None,
    )
    base.update(kw)
    return Mission(**base)


def _person(pid: str, area: str, joined: datetime, skills: str | None, le: str | None,
            consent_le: bool, avail: int = 600, cap: int = 2) -> Person:
    return Person(person_id=pid, area_id=area, joined_at=joined, availability_min_per_week=avail,
                  max_concurrent=cap, skills=skills, lived_experience=le, consent_matching=True,
                  consent_lived_experience=consent_le)


def _outcome(oid: str, aid: str, at: datetime, success: bool, status: str = "verified"):
    return Outcome(outcome_id=oid, assignment_id=aid, measured_at=at,
                   value=0.09 if success else 0.19, success=success, status=status,
                   payout=(1000.0 if success else 0.0) if status == "verified" else None)


def _assign(aid: str, mid: str, at: datetime, person: str | None = None,
            group: str | None = None, status: str = "completed") -> Assignment:
    return Assignment(assignment_id=aid, mission_id=mid, person_id=person, group_id=group,
                      shortlist_id=None, assigned_at=at, status=status, propensity=None)


def populate_tiny_city(store) -> None:  # noqa: ANN001
    with store.session() as s:
        s.add_all([
            Area(area_id="A1", name="Nord", lat=48.85, lon=2.35),
            Area(area_id="A2", name="Gare", lat=48.86, lon=2.36),
            Area(area_id="A3", name="Plateau", lat=48.90, lon=2.40),
        ])
        s.flush()
        s.add_all([AreaLink(area_a="A1", area_b="A2"), AreaLink(area_a="A2", area_b="A3")])
        s.add(Client(client_id="C1", kind="school", name="Collège Jean Moulin"))
        s.add_all([
            _person("P1", "A1", d(2024, 1, 1), "mediation;teaching", "large_family", True),
            _person("P2", "A1", d(2024, 1, 1), "outreach", "drug_use", True),
            _person("P3", "A2", d(2024, 3, 1), "consulting", None, False, avail=90),
            _person("P4", "A3", d(2025, 5, 1), "teaching", "single_parent", True),
            _person("P5", "A2", d(2025, 9, 1), "teaching", None, False),  # joins after T
        ])
        s.flush()
        s.add_all([
            Tie(person_a="P1", person_b="P2", kind="peer", weight=0.8, created_at=d(2024, 6, 1)),
            Tie(person_a="P1", person_b="P4", kind="mentor", weight=0.5,
                created_at=d(2025, 5, 10)),
            Tie(person_a="P2", person_b="P3", kind="neighbour", weight=0.4,
                created_at=d(2025, 9, 1)),  # after T
        ])
        s.add(PeerGroup(group_id="G1", kind="peer", created_at=d(2024, 7, 1)))
        s.flush()
        s.add_all([
            GroupMember(group_id="G1", person_id="P1", joined_at=d(2024, 7, 1)),
            GroupMember(group_id="G1", person_id="P2", joined_at=d(2024, 7, 1)),
        ])
        s.add_all([
            _mission("M1", "school_absenteeism", "A1", d(2025, 1, 1)),
            _mission("M2", "school_absenteeism", "A2", d(2025, 2, 1)),
            _mission("M3", "drug_outreach", "A1", d(2025, 3, 1),
                     title="Reach drug users near the station",
                     description="Outreach to current users and link to care"),
            _mission("M4", "school_absenteeism", "A2", d(2025, 6, 1)),
            _mission("M9", "school_absenteeism", "A1", T, status="open"),
        ])
        s.flush()
        s.add_all([
            _assign("AS1", "M1", d(2025, 1, 5), person="P1"),
            _assign("AS2", "M2", d(2025, 2, 5), person="P1"),
            _assign("AS3", "M3", d(2025, 3, 5), person="P2"),
            _assign("AS4", "M2", d(2025, 2, 6), person="P3"),
            _assign("AS5", "M4", d(2025, 6, 5), group="G1", status="active"),
        ])
        s.flush()
        s.add_all([
            _outcome("O1", "AS1", d(2025, 3, 20), True),
            _outcome("O2", "AS2", d(2025, 4, 20), False),
            _outcome("O3", "AS3", d(2025, 5, 20), True),
            _outcome("O4", "AS4", d(2025, 9, 15), True),  # measured after T
            _outcome("O5", "AS5", d(2025, 7, 1), True, status="claimed"),  # not verified
        ])

