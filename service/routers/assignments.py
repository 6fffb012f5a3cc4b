"""Assignments: a candidate proposed for a mission, and its lifecycle.

``offered -> accepted | declined | withdrawn``, ``accepted -> active | withdrawn``,
``active -> completed | withdrawn``; declined, completed and withdrawn are final. People
commit to nothing: declining or withdrawing is free (no feature counts it against anyone:
the snapshot drops declined and withdrawn assignments, and only verified outcomes make a
track record).

The hard rules hold for a pick by hand too: the person (every member, for a group) must
consent to be matched and, on a mission with a vetting regime, hold a valid check of that
regime covering the mission's window; accepting needs free capacity (``max_concurrent``).
With a ``shortlist_id`` the candidate must be on that list, and the propensity it was served
with is logged (never taken from the caller).

Scopes: offer and move on: engineer, platform. Read: engineer, platform, client (assignments
of its own missions).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated
from uuid import uuid4

from fastapi import APIRouter, Depends, HTTPException
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from graph import NotFoundError, Store, ValidationError
from graph._models import (
    Assignment,
    GroupMember,
    Mission,
    PeerGroup,
    Person,
    Shortlist,
    ShortlistCandidate,
    VettingRecord,
)
from service.deps import Principal, StoreDep, require
from service.routers._common import ERRORS, mission_for, write
from service.schemas import AssignmentIn, AssignmentOut, AssignmentPatch, PathId

__all__ = ["NEXT", "router"]

router = APIRouter(prefix="/v1", tags=["assignments"], responses=ERRORS)

Writer = Annotated[Principal, Depends(require("engineer", "platform"))]
Reader = Annotated[Principal, Depends(require("engineer", "platform", "client"))]

# The lifecycle: where each status may go next.
NEXT: dict[str, frozenset[str]] = {
    "offered": frozenset({"accepted", "declined", "withdrawn"}),
    "accepted": frozenset({"active", "withdrawn"}),
    "active": frozenset({"completed", "withdrawn"}),
    "declined": frozenset(),
    "completed": frozenset(),
    "withdrawn": frozenset(),
}
LIVE = ("offered", "accepted", "active")
HOLDING = ("accepted", "active")  # what uses a person's capacity
OFFERABLE = ("open", "staffed", "measuring")


def assignment_out(a: Assignment) -> AssignmentOut:
    return AssignmentOut(assignment_id=a.assignment_id, mission_id=a.mission_id,
                         person_id=a.person_id, group_id=a.group_id,
                         shortlist_id=a.shortlist_id, assigned_at=a.assigned_at,
                         status=a.status, propensity=a.propensity)


def assignment_for(s: Session, principal: Principal, assignment_id: str,
                   lock: bool = False) -> tuple[Assignment, Mission]:
    """The assignment and its mission, if the caller may see them (clients: their own)."""
    stmt = select(Assignment).where(Assignment.assignment_id == assignment_id)
    a = s.execute(stmt.with_for_update() if lock else stmt).scalar_one_or_none()
    if a is None:
        raise NotFoundError(f"assignment {assignment_id!r} is not in the store")
    try:
        mission = mission_for(s, principal, a.mission_id)
    except NotFoundError:
        raise NotFoundError(f"assignment {assignment_id!r} is not in the store") from None
    return a, mission


def _members(s: Session, body: AssignmentIn) -> list[Person]:
    if body.person_id is not None:
        person = s.get(Person, body.person_id)
        if person is None:
            raise ValidationError(f"person_id: unknown person {body.person_id!r}")
        return [person]
    if s.get(PeerGroup, body.group_id) is None:
        raise ValidationError(f"group_id: unknown group {body.group_id!r}")
    return list(s.execute(select(Person).join(GroupMember, GroupMember.person_id
                                              == Person.person_id)
                          .where(GroupMember.group_id == body.group_id)
                          .order_by(Person.person_id)).scalars())


def _check_rules(s: Session, mission: Mission, people: list[Person], field: str) -> None:
    """Consent and vetting: hard rules, failing closed."""
    for p in people:
        if not p.consent_matching:
            raise ValidationError(f"{field}: person {p.person_id!r} has not consented to be "
                                  "matched")
    if mission.vetting_regime is None:
        return
    for p in people:
        covered = s.execute(select(VettingRecord.id).where(
            VettingRecord.person_id == p.person_id,
            VettingRecord.regime == mission.vetting_regime, VettingRecord.status == "valid",
            VettingRecord.valid_from <= mission.starts_at,
            (VettingRecord.expires_at.is_(None)) | (VettingRecord.expires_at >= mission.ends_at),
        )).first()
        if covered is None:
            raise ValidationError(f"{field}: person {p.person_id!r} has no valid "
                                  f"{mission.vetting_regime} check covering the mission")


def _propensity(s: Session, body: AssignmentIn, mission: Mission) -> float | None:
    if body.shortlist_id is None:
        return None
    shortlist = s.get(Shortlist, body.shortlist_id)
    if shortlist is None:
        raise ValidationError(f"shortlist_id: unknown shortlist {body.shortlist_id!r}")
    if shortlist.mission_id != mission.mission_id:
        raise ValidationError(f"shortlist_id: {body.shortlist_id!r} was served for mission "
                              f"{shortlist.mission_id!r}, not {mission.mission_id!r}")
    cand = ShortlistCandidate.person_id if body.person_id else ShortlistCandidate.group_id
    row = s.execute(select(ShortlistCandidate.propensity).where(
        ShortlistCandidate.shortlist_id == body.shortlist_id,
        cand == (body.person_id or body.group_id))).first()
    if row is None:
        who = "person_id" if body.person_id else "group_id"
        raise ValidationError(f"{who}: {body.person_id or body.group_id!r} is not on "
                              f"shortlist {body.shortlist_id!r}")
    return row[0]


@router.post("/assignments", status_code=201, response_model=AssignmentOut)
def offer(body: AssignmentIn, store: StoreDep, principal: Writer) -> AssignmentOut:
    """Offer a mission to a person or a peer group (status ``offered``)."""
    with write(store, "assignment") as s:
        mission = mission_for(s, principal, body.mission_id, lock=True)
        if mission.status not in OFFERABLE:
            raise HTTPException(409, f"mission_id: mission {mission.mission_id!r} is "
                                     f"{mission.status}; offers go to open, staffed or "
                                     "measuring missions")
        field = "person_id" if body.person_id else "group_id"
        people = _members(s, body)
        _check_rules(s, mission, people, field)
        cand = Assignment.person_id if body.person_id else Assignment.group_id
        live = s.execute(select(Assignment.assignment_id).where(
            Assignment.mission_id == mission.mission_id, cand == (body.person_id
                                                                  or body.group_id),
            Assignment.status.in_(LIVE))).first()
        if live:
            raise HTTPException(409, f"{field}: already has assignment {live[0]!r} on "
                                     f"mission {mission.mission_id!r}")
        a = Assignment(assignment_id=f"AS-{uuid4().hex[:16]}", mission_id=mission.mission_id,
                       person_id=body.person_id, group_id=body.group_id,
                       shortlist_id=body.shortlist_id, assigned_at=datetime.now(UTC),
                       status="offered", propensity=_propensity(s, body, mission))
        s.add(a)
        s.flush()
        # An offer is a hold (capacity, once per mission) of every person it names.
        Store.bump_version(s, persons=[p.person_id for p in people], groups=[body.group_id])
        return assignment_out(a)


@router.get("/assignments/{assignment_id}", response_model=AssignmentOut)
def get_assignment(assignment_id: PathId, store: StoreDep, principal: Reader) -> AssignmentOut:
    with store.reader() as s:
        return assignment_out(assignment_for(s, principal, assignment_id)[0])


@router.get("/missions/{mission_id}/assignments", response_model=list[AssignmentOut])
def mission_assignments(mission_id: PathId, store: StoreDep,
                        principal: Reader) -> list[AssignmentOut]:
    """Every assignment of a mission, oldest first."""
    with store.reader() as s:
        mission_for(s, principal, mission_id)
        return [assignment_out(a) for a in s.execute(
            select(Assignment).where(Assignment.mission_id == mission_id)
            .order_by(Assignment.assigned_at, Assignment.assignment_id)).scalars()]


def _holders_of(s: Session, a: Assignment) -> list[str]:
    """The persons an assignment holds: its person, or every member of its group."""
    return ([a.person_id] if a.person_id else list(s.execute(
        select(GroupMember.person_id).where(GroupMember.group_id == a.group_id)).scalars()))


def _check_capacity(s: Session, a: Assignment) -> None:
    people = _holders_of(s, a)
    for pid in sorted(people):  # one lock order for every writer
        person = s.execute(select(Person).where(Person.person_id == pid).with_for_update()
                           ).scalar_one()
        groups = select(GroupMember.group_id).where(GroupMember.person_id == pid)
        held = s.execute(select(func.count()).select_from(Assignment).where(
            Assignment.status.in_(HOLDING), Assignment.assignment_id != a.assignment_id,
            (Assignment.person_id == pid) | Assignment.group_id.in_(groups))).scalar_one()
        if held >= person.max_concurrent:
            raise HTTPException(409, f"status: person {pid!r} already holds {held} "
                                     f"assignment(s), their capacity is "
                                     f"{person.max_concurrent}")


@router.patch("/assignments/{assignment_id}", response_model=AssignmentOut)
def move(assignment_id: PathId, body: AssignmentPatch, store: StoreDep,
         principal: Writer) -> AssignmentOut:
    """Move an assignment along its lifecycle (declining or withdrawing is free)."""
    with write(store, f"assignment {assignment_id!r}") as s:
        a, _ = assignment_for(s, principal, assignment_id, lock=True)
        if body.status not in NEXT[a.status]:
            allowed = ", ".join(sorted(NEXT[a.status])) or "nothing (final)"
            raise HTTPException(409, f"status: assignment {assignment_id!r} is {a.status}; "
                                     f"it can move to {allowed}, not {body.status}")
        if body.status == "accepted":
            _check_capacity(s, a)
        a.status = body.status
        s.flush()
        Store.bump_version(s, persons=_holders_of(s, a), groups=[a.group_id])
        return assignment_out(a)
