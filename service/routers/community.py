"""The community as resources: persons, vetting, ties, peer groups, clients, missions, bundles.

Scopes (admin passes every check):

======================================  =====================================================
endpoint                                scopes
======================================  =====================================================
POST/PATCH persons, vetting, ties,      engineer, data
groups
GET /v1/persons, /v1/persons/{id},      engineer, data (``lived_experience`` and ``vetting``
/v1/groups/{id}                         only for engineer, lived experience only with consent;
                                        admin reads them redacted, like data)
GET vetting                             engineer (not admin: special-category reads)
GET ties                                engineer
POST/PATCH clients, missions;           engineer
GET /v1/clients
GET /v1/clients/{id}                    engineer, client (its own)
GET /v1/missions, /v1/missions/{id}     engineer, platform, client (its own)
POST /v1/bundles                        data
======================================  =====================================================

Writes that change what matching sees (persons, vetting, ties, groups, missions) move the
store version and journal what they touched (:meth:`graph.Store.bump_version`): every
serving engine leaves a changed person or group out, and reads a changed mission afresh,
from its next request until it is rebuilt in the background.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Annotated
from uuid import uuid4

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from sqlalchemy import exists, or_, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from graph import BundleError, NotFoundError, Store, ValidationError, import_bundle
from graph._bundle import PAY_TERMS
from graph._bundle_schema import BUNDLE_FILES
from graph._models import (
    Area,
    Assignment,
    Client,
    GroupMember,
    Mission,
    Outcome,
    PeerGroup,
    Person,
    Tie,
    VettingRecord,
)
from graph._rights import is_tombstoned
from service.deps import Principal, StoreDep, require
from service.routers._common import ERRORS, check_vocab, given, mission_for, vocabulary, write
from service.schemas import (
    ClientIn,
    ClientOut,
    ClientPatch,
    GroupIn,
    GroupOut,
    GroupPatch,
    ImportOut,
    MemberOut,
    MissionIn,
    MissionOut,
    MissionPatch,
    MissionStatus,
    PathId,
    PersonIn,
    PersonOut,
    PersonPatch,
    PersonSummary,
    TieIn,
    TieOut,
    TiePatch,
    VettingIn,
    VettingOut,
    VettingPatch,
)

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["community"], responses=ERRORS)

Engineer = Annotated[Principal, Depends(require("engineer"))]
Steward = Annotated[Principal, Depends(require("engineer", "data"))]
Reader = Annotated[Principal, Depends(require("engineer", "platform", "client"))]
Limit = Annotated[int, Query(ge=1, le=1000)]
IdFilter = Annotated[str | None, Query(min_length=1, max_length=64,
                                       pattern=r"^[^\x00-\x1f\x7f]+$")]
Offset = Annotated[int, Query(ge=0, le=10_000_000)]

MAX_BUNDLE_BYTES = 256 * 2**20  # the upload (zip)
MAX_UNZIPPED_BYTES = 2 * 2**30  # what it expands to


def _now() -> datetime:
    return datetime.now(UTC)


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid4().hex[:16]}"


def _tags(value: str | None) -> list[str]:
    return value.split(";") if value else []


def _join(tags: list[str] | None) -> str | None:
    return ";".join(sorted(set(tags))) if tags else None


def _sees_details(principal: Principal) -> bool:
    # Lived experience and vetting details go to the engineer scope only: admin keys pass
    # every scope check but do not read special-category data (nor does the platform).
    return principal.scope == "engineer"


def _engineer_only(principal: Principal) -> None:
    if not _sees_details(principal):
        raise HTTPException(403, f"scope {principal.scope!r} may not read vetting details "
                                 "(engineer only)")


def _require_area(s: Session, area_id: str, field: str = "area_id") -> None:
    if s.get(Area, area_id) is None:
        raise ValidationError(f"{field}: unknown area {area_id!r}")


def _person(s: Session, person_id: str, field: str | None = None, lock: bool = False) -> Person:
    stmt = select(Person).where(Person.person_id == person_id)
    person = s.execute(stmt.with_for_update() if lock else stmt).scalar_one_or_none()
    if person is None:
        if field:  # an id in the body: the body is invalid
            raise ValidationError(f"{field}: unknown person {person_id!r}")
        raise NotFoundError(f"person {person_id!r} is not in the store")
    return person


# --------------------------------------------------------------------------- persons


def _vetting_out(v: VettingRecord) -> VettingOut:
    return VettingOut(vetting_id=v.id, person_id=v.person_id, regime=v.regime, status=v.status,
                      valid_from=v.valid_from, expires_at=v.expires_at, reference=v.reference)


def _person_out(s: Session, p: Person, principal: Principal) -> PersonOut:
    out = PersonOut(person_id=p.person_id, area_id=p.area_id, joined_at=p.joined_at,
                    availability_min_per_week=p.availability_min_per_week,
                    max_concurrent=p.max_concurrent, skills=_tags(p.skills),
                    consent_matching=p.consent_matching,
                    consent_lived_experience=p.consent_lived_experience)
    if _sees_details(principal):
        # Special-category data: engineer scope only, and only with the person's consent.
        if p.consent_lived_experience:
            out.lived_experience = _tags(p.lived_experience)
        out.vetting = [_vetting_out(v) for v in s.execute(
            select(VettingRecord).where(VettingRecord.person_id == p.person_id)
            .order_by(VettingRecord.valid_from, VettingRecord.id)).scalars()]
    return out


@router.post("/persons", status_code=201, response_model=PersonOut)
def create_person(body: PersonIn, store: StoreDep, principal: Steward) -> PersonOut:
    """Add a person to the community."""
    pid = body.person_id or _new_id("P")
    with write(store, f"person {pid!r}") as s:
        if s.get(Person, pid) is not None:
            raise HTTPException(409, f"person_id: {pid!r} already exists")
        if is_tombstoned(s, pid):
            raise HTTPException(409, f"person_id: {pid!r} was erased (right to erasure) and "
                                     "cannot be created again")
        _require_area(s, body.area_id)
        vocab = vocabulary(s)
        check_vocab(vocab, "skill", "skills", body.skills)
        check_vocab(vocab, "lived_experience", "lived_experience", body.lived_experience)
        person = Person(person_id=pid, area_id=body.area_id,
                        joined_at=body.joined_at or _now(),
                        availability_min_per_week=body.availability_min_per_week,
                        max_concurrent=body.max_concurrent, skills=_join(body.skills),
                        lived_experience=_join(body.lived_experience),
                        consent_matching=body.consent_matching,
                        consent_lived_experience=body.consent_lived_experience)
        s.add(person)
        s.flush()
        Store.bump_version(s, persons=[pid])
        return _person_out(s, person, principal)


@router.get("/persons", response_model=list[PersonSummary])
def list_persons(store: StoreDep, _: Steward, area_id: IdFilter = None, limit: Limit = 100,
                 offset: Offset = 0) -> list[PersonSummary]:
    """Persons by id (ids, area, join date and whether they may be matched)."""
    with store.reader() as s:
        stmt = select(Person).order_by(Person.person_id).limit(limit).offset(offset)
        if area_id is not None:
            stmt = stmt.where(Person.area_id == area_id)
        return [PersonSummary(person_id=p.person_id, area_id=p.area_id, joined_at=p.joined_at,
                              consent_matching=p.consent_matching)
                for p in s.execute(stmt).scalars()]


@router.get("/persons/{person_id}", response_model=PersonOut)
def get_person(person_id: PathId, store: StoreDep, principal: Steward) -> PersonOut:
    """One person; lived experience and vetting only for the engineer scope."""
    with store.reader() as s:
        return _person_out(s, _person(s, person_id), principal)


@router.patch("/persons/{person_id}", response_model=PersonOut)
def update_person(person_id: PathId, body: PersonPatch, store: StoreDep,
                  principal: Steward) -> PersonOut:
    """Change a person's area, availability, capacity, skills or (with consent) lived
    experience."""
    fields = given(body, nullable={"skills", "lived_experience"})
    with write(store, f"person {person_id!r}") as s:
        person = _person(s, person_id, lock=True)
        vocab = vocabulary(s)
        if "area_id" in fields:
            _require_area(s, fields["area_id"])
        check_vocab(vocab, "skill", "skills", fields.get("skills"))
        if fields.get("lived_experience"):
            if not person.consent_lived_experience:
                raise ValidationError("lived_experience: the person has not consented to its "
                                      "use; such tags are not stored at all")
            check_vocab(vocab, "lived_experience", "lived_experience",
                        fields["lived_experience"])
        for name, value in fields.items():
            setattr(person, name, _join(value) if name in ("skills", "lived_experience")
                    else value)
        s.flush()
        if fields:
            Store.bump_version(s, persons=[person_id])
        return _person_out(s, person, principal)


# --------------------------------------------------------------------------- vetting


@router.get("/persons/{person_id}/vetting", response_model=list[VettingOut])
def list_vetting(person_id: PathId, store: StoreDep, principal: Engineer) -> list[VettingOut]:
    """A person's vetting records (regime, status, dates, reference)."""
    _engineer_only(principal)
    with store.reader() as s:
        _person(s, person_id)
        return [_vetting_out(v) for v in s.execute(
            select(VettingRecord).where(VettingRecord.person_id == person_id)
            .order_by(VettingRecord.valid_from, VettingRecord.id)).scalars()]


@router.post("/persons/{person_id}/vetting", status_code=201, response_model=VettingOut)
def create_vetting(person_id: PathId, body: VettingIn, store: StoreDep,
                   _: Steward) -> VettingOut:
    """Record a vetting check (never its content)."""
    with write(store, f"vetting of {person_id!r}") as s:
        _person(s, person_id, lock=True)
        clash = s.execute(select(VettingRecord.id).where(
            VettingRecord.person_id == person_id, VettingRecord.regime == body.regime,
            VettingRecord.valid_from == body.valid_from)).first()
        if clash:
            raise HTTPException(409, f"valid_from: person {person_id!r} already has a "
                                     f"{body.regime} record from {body.valid_from.isoformat()} "
                                     f"(vetting_id {clash[0]})")
        record = VettingRecord(person_id=person_id, **body.model_dump())
        s.add(record)
        s.flush()
        Store.bump_version(s, persons=[person_id])
        return _vetting_out(record)


def _vetting(s: Session, vetting_id: int) -> VettingRecord:
    record = s.get(VettingRecord, vetting_id)
    if record is None:
        raise NotFoundError(f"vetting record {vetting_id} is not in the store")
    return record


VettingId = Annotated[int, PathParam(ge=1, le=2**62)]


@router.get("/vetting/{vetting_id}", response_model=VettingOut)
def get_vetting(vetting_id: VettingId, store: StoreDep, principal: Engineer) -> VettingOut:
    _engineer_only(principal)
    with store.reader() as s:
        return _vetting_out(_vetting(s, vetting_id))


@router.patch("/vetting/{vetting_id}", response_model=VettingOut)
def update_vetting(vetting_id: VettingId, body: VettingPatch, store: StoreDep,
                   _: Steward) -> VettingOut:
    """Change a record's status, expiry or reference (e.g. revoked after a new fact)."""
    fields = given(body, nullable={"expires_at", "reference"})
    with write(store, f"vetting record {vetting_id}") as s:
        record = _vetting(s, vetting_id)
        expires = fields.get("expires_at", record.expires_at)
        if expires is not None and expires < record.valid_from:
            raise ValidationError("expires_at: before valid_from")
        for name, value in fields.items():
            setattr(record, name, value)
        s.flush()
        if fields:
            Store.bump_version(s, persons=[record.person_id])
        return _vetting_out(record)


# --------------------------------------------------------------------------- ties


def _tie_out(t: Tie) -> TieOut:
    return TieOut(tie_id=t.id, person_a=t.person_a, person_b=t.person_b, kind=t.kind,
                  weight=t.weight, created_at=t.created_at)


TieId = VettingId


@router.post("/ties", status_code=201, response_model=TieOut)
def create_tie(body: TieIn, store: StoreDep, _: Steward) -> TieOut:
    """A weighted, dated tie between two persons (undirected: stored smaller id first)."""
    a, b = sorted((body.person_a, body.person_b))
    with write(store, "tie") as s:
        _person(s, body.person_a, field="person_a")
        _person(s, body.person_b, field="person_b")
        check_vocab(vocabulary(s), "tie_kind", "kind", body.kind)
        clash = s.execute(select(Tie.id).where(Tie.person_a == a, Tie.person_b == b,
                                               Tie.kind == body.kind)).first()
        if clash:
            raise HTTPException(409, f"kind: a {body.kind} tie between {a!r} and {b!r} exists "
                                     f"(tie_id {clash[0]})")
        tie = Tie(person_a=a, person_b=b, kind=body.kind, weight=body.weight,
                  created_at=body.created_at or _now())
        s.add(tie)
        s.flush()
        Store.bump_version(s, persons=[a, b])
        return _tie_out(tie)


@router.get("/ties/{tie_id}", response_model=TieOut)
def get_tie(tie_id: TieId, store: StoreDep, _: Engineer) -> TieOut:
    with store.reader() as s:
        tie = s.get(Tie, tie_id)
        if tie is None:
            raise NotFoundError(f"tie {tie_id} is not in the store")
        return _tie_out(tie)


@router.patch("/ties/{tie_id}", response_model=TieOut)
def update_tie(tie_id: TieId, body: TiePatch, store: StoreDep, _: Steward) -> TieOut:
    """Change a tie's weight."""
    with write(store, f"tie {tie_id}") as s:
        tie = s.get(Tie, tie_id)
        if tie is None:
            raise NotFoundError(f"tie {tie_id} is not in the store")
        tie.weight = body.weight
        s.flush()
        Store.bump_version(s, persons=[tie.person_a, tie.person_b])
        return _tie_out(tie)


@router.get("/persons/{person_id}/ties", response_model=list[TieOut])
def list_ties(person_id: PathId, store: StoreDep, _: Engineer,
              limit: Limit = 1000, offset: Offset = 0) -> list[TieOut]:
    """A person's ties."""
    with store.reader() as s:
        _person(s, person_id)
        return [_tie_out(t) for t in s.execute(
            select(Tie).where(or_(Tie.person_a == person_id, Tie.person_b == person_id))
            .order_by(Tie.id).limit(limit).offset(offset)).scalars()]


# --------------------------------------------------------------------------- groups


def _group_out(s: Session, g: PeerGroup) -> GroupOut:
    members = s.execute(select(GroupMember).where(GroupMember.group_id == g.group_id)
                        .order_by(GroupMember.person_id)).scalars()
    return GroupOut(group_id=g.group_id, kind=g.kind, created_at=g.created_at,
                    members=[MemberOut(person_id=m.person_id, joined_at=m.joined_at)
                             for m in members])


def _set_members(s: Session, group: PeerGroup, members: list, now: datetime) -> set[str]:
    """Make ``members`` the group's members; returns everyone who was or is one."""
    current = {m.person_id: m for m in s.execute(
        select(GroupMember).where(GroupMember.group_id == group.group_id)).scalars()}
    wanted = {}
    for i, m in enumerate(members):
        _person(s, m.person_id, field=f"members.{i}.person_id")
        joined = m.joined_at or (current[m.person_id].joined_at if m.person_id in current
                                 else max(now, group.created_at))
        if joined < group.created_at:
            raise ValidationError(f"members.{i}.joined_at: before the group was created "
                                  f"({group.created_at.isoformat()})")
        wanted[m.person_id] = joined
    for pid, row in current.items():
        if pid not in wanted:
            s.delete(row)
    for pid, joined in wanted.items():
        if pid in current:
            current[pid].joined_at = joined
        else:
            s.add(GroupMember(group_id=group.group_id, person_id=pid, joined_at=joined))
    s.flush()
    return set(current) | set(wanted)


@router.post("/groups", status_code=201, response_model=GroupOut)
def create_group(body: GroupIn, store: StoreDep, _: Steward) -> GroupOut:
    """A peer group of 2 to 6 persons who take missions together."""
    gid = body.group_id or _new_id("G")
    with write(store, f"group {gid!r}") as s:
        if s.get(PeerGroup, gid) is not None:
            raise HTTPException(409, f"group_id: {gid!r} already exists")
        check_vocab(vocabulary(s), "group_kind", "kind", body.kind)
        now = _now()
        group = PeerGroup(group_id=gid, kind=body.kind, created_at=body.created_at or now)
        s.add(group)
        s.flush()
        members = _set_members(s, group, body.members, now)
        Store.bump_version(s, persons=members, groups=[gid])
        return _group_out(s, group)


@router.get("/groups/{group_id}", response_model=GroupOut)
def get_group(group_id: PathId, store: StoreDep, _: Steward) -> GroupOut:
    with store.reader() as s:
        group = s.get(PeerGroup, group_id)
        if group is None:
            raise NotFoundError(f"group {group_id!r} is not in the store")
        return _group_out(s, group)


@router.patch("/groups/{group_id}", response_model=GroupOut)
def update_group(group_id: PathId, body: GroupPatch, store: StoreDep, _: Steward) -> GroupOut:
    """Change a group's kind or its members (the whole list, 2 to 6)."""
    fields = given(body)
    with write(store, f"group {group_id!r}") as s:
        group = s.execute(select(PeerGroup).where(PeerGroup.group_id == group_id)
                          .with_for_update()).scalar_one_or_none()
        if group is None:
            raise NotFoundError(f"group {group_id!r} is not in the store")
        if "kind" in fields:
            check_vocab(vocabulary(s), "group_kind", "kind", fields["kind"])
            group.kind = fields["kind"]
        members: set[str] = set()
        if "members" in fields:
            members = _set_members(s, group, body.members, _now())
        s.flush()
        if fields:
            Store.bump_version(s, persons=members, groups=[group_id])
        return _group_out(s, group)


# --------------------------------------------------------------------------- clients


def _client_out(c: Client) -> ClientOut:
    return ClientOut(client_id=c.client_id, kind=c.kind, name=c.name)


@router.post("/clients", status_code=201, response_model=ClientOut)
def create_client(body: ClientIn, store: StoreDep, _: Engineer) -> ClientOut:
    """Who commissions and pays missions."""
    cid = body.client_id or _new_id("C")
    with write(store, f"client {cid!r}") as s:
        if s.get(Client, cid) is not None:
            raise HTTPException(409, f"client_id: {cid!r} already exists")
        check_vocab(vocabulary(s), "client_kind", "kind", body.kind)
        client = Client(client_id=cid, kind=body.kind, name=body.name)
        s.add(client)
        s.flush()
        return _client_out(client)


@router.get("/clients", response_model=list[ClientOut])
def list_clients(store: StoreDep, _: Engineer, limit: Limit = 100,
                 offset: Offset = 0) -> list[ClientOut]:
    with store.reader() as s:
        return [_client_out(c) for c in s.execute(
            select(Client).order_by(Client.client_id).limit(limit).offset(offset)).scalars()]


@router.get("/clients/{client_id}", response_model=ClientOut)
def get_client(client_id: PathId, store: StoreDep,
               principal: Annotated[Principal, Depends(require("engineer", "client"))]
               ) -> ClientOut:
    """A client; a client key reads only itself."""
    with store.reader() as s:
        client = s.get(Client, client_id)
        if client is None or (principal.scope == "client"
                              and principal.client_id != client_id):
            raise NotFoundError(f"client {client_id!r} is not in the store")
        return _client_out(client)


@router.patch("/clients/{client_id}", response_model=ClientOut)
def update_client(client_id: PathId, body: ClientPatch, store: StoreDep,
                  _: Engineer) -> ClientOut:
    fields = given(body)
    with write(store, f"client {client_id!r}") as s:
        client = s.get(Client, client_id)
        if client is None:
            raise NotFoundError(f"client {client_id!r} is not in the store")
        if "kind" in fields:
            check_vocab(vocabulary(s), "client_kind", "kind", fields["kind"])
        for name, value in fields.items():
            setattr(client, name, value)
        s.flush()
        return _client_out(client)


# --------------------------------------------------------------------------- missions


def _mission_out(m: Mission) -> MissionOut:
    return MissionOut.model_validate({c: getattr(m, c) for c in MissionOut.model_fields})


def _check_mission(m: Mission) -> None:
    """The rules of a mission (as for a bundle row), each error naming its field."""
    if m.team_min > m.team_max:
        raise ValidationError(f"team_min: {m.team_min} is above team_max {m.team_max}")
    if m.starts_at > m.ends_at:
        raise ValidationError("starts_at: after ends_at")
    if m.pay_rule == "per_unit" and m.unit_price is None:
        raise ValidationError("unit_price: pay_rule per_unit needs it")
    if m.pay_rule in ("threshold", "linear") and m.fee is None:
        raise ValidationError(f"fee: pay_rule {m.pay_rule} needs it")


@router.post("/missions", status_code=201, response_model=MissionOut)
def create_mission(body: MissionIn, store: StoreDep, _: Engineer) -> MissionOut:
    """A client's mission with its outcome metric and pay rule."""
    mid = body.mission_id or _new_id("M")
    with write(store, f"mission {mid!r}") as s:
        if s.get(Mission, mid) is not None:
            raise HTTPException(409, f"mission_id: {mid!r} already exists")
        if s.get(Client, body.client_id) is None:
            raise ValidationError(f"client_id: unknown client {body.client_id!r}")
        _require_area(s, body.area_id)
        check_vocab(vocabulary(s), "need_type", "need_type", body.need_type)
        mission = Mission(**body.model_dump(exclude={"mission_id"}), mission_id=mid,
                          created_at=_now())
        _check_mission(mission)
        s.add(mission)
        s.flush()
        Store.bump_version(s, missions=[mid])
        return _mission_out(mission)


@router.get("/missions", response_model=list[MissionOut])
def list_missions(store: StoreDep, principal: Reader,
                  status: MissionStatus | None = None, client_id: IdFilter = None,
                  limit: Limit = 100, offset: Offset = 0) -> list[MissionOut]:
    """Missions (a client key sees only its own)."""
    with store.reader() as s:
        stmt = select(Mission).order_by(Mission.mission_id).limit(limit).offset(offset)
        if principal.scope == "client":
            stmt = stmt.where(Mission.client_id == principal.client_id)
        if client_id is not None:
            stmt = stmt.where(Mission.client_id == client_id)
        if status is not None:
            stmt = stmt.where(Mission.status == status)
        return [_mission_out(m) for m in s.execute(stmt).scalars()]


@router.get("/missions/{mission_id}", response_model=MissionOut)
def get_mission(mission_id: PathId, store: StoreDep, principal: Reader) -> MissionOut:
    with store.reader() as s:
        return _mission_out(mission_for(s, principal, mission_id))


NULLABLE_MISSION = {"description", "unit_price", "fee", "contract_cap", "vetting_regime",
                    "radius_km"}


@router.patch("/missions/{mission_id}", response_model=MissionOut)
def update_mission(mission_id: PathId, body: MissionPatch, store: StoreDep,
                   principal: Engineer) -> MissionOut:
    """Change a mission; its pay terms are frozen once one of its outcomes is verified."""
    fields = given(body, nullable=NULLABLE_MISSION)
    with write(store, f"mission {mission_id!r}") as s:
        mission = mission_for(s, principal, mission_id, lock=True)
        if "area_id" in fields:
            _require_area(s, fields["area_id"])
        check_vocab(vocabulary(s), "need_type", "need_type", fields.get("need_type"))
        terms = sorted(k for k in fields if k in PAY_TERMS and fields[k] != getattr(mission, k))
        if terms:
            paid = s.execute(select(exists().where(
                Outcome.assignment_id == Assignment.assignment_id,
                Assignment.mission_id == mission_id, Outcome.status == "verified"))).scalar()
            if paid:
                raise HTTPException(409, f"{', '.join(terms)}: the pay terms cannot change "
                                         "once an outcome of the mission is verified")
        window = {"starts_at", "ends_at"} & {k for k in fields
                                             if fields[k] != getattr(mission, k)}
        for name, value in fields.items():
            setattr(mission, name, value)
        _check_mission(mission)
        s.flush()
        if fields:
            # A new window changes the holds (capacity) of everyone assigned to it.
            persons, groups = _holders(s, mission_id) if window else ((), ())
            Store.bump_version(s, persons=persons, groups=groups, missions=[mission_id])
        return _mission_out(mission)


def _holders(s: Session, mission_id: str) -> tuple[set[str], set[str]]:
    """Persons (members of groups included) and groups holding an assignment of the mission
    (any not declined or withdrawn: the engine's hold rule)."""
    rows = s.execute(select(Assignment.person_id, Assignment.group_id).where(
        Assignment.mission_id == mission_id,
        Assignment.status.not_in(("declined", "withdrawn")))).all()
    persons = {p for p, _ in rows if p is not None}
    groups = {g for _, g in rows if g is not None}
    if groups:
        persons |= set(s.execute(select(GroupMember.person_id).where(
            GroupMember.group_id.in_(groups))).scalars())
    return persons, groups


# --------------------------------------------------------------------------- bundles


def _unpack(data: bytes, out: Path) -> None:
    """Unzip a bundle into ``out``: bundle files only, flat (or in one folder), bounded."""
    known = {f"{spec.name}.{ext}" for spec in BUNDLE_FILES for ext in ("csv", "parquet")}
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ValidationError("body: not a zip archive of bundle files") from None
    seen: set[str] = set()
    total = 0
    with archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            parts = PurePosixPath(info.filename).parts
            name = parts[-1] if parts else ""
            if len(parts) > 2 or ".." in parts or info.filename.startswith("/"):
                raise ValidationError(f"body: {info.filename!r}: bundle files must be at the "
                                      "top of the archive or in one folder")
            if name.startswith(".") or name.startswith("__MACOSX"):
                continue
            if name not in known:
                raise ValidationError(f"body: {info.filename!r} is not a bundle file "
                                      "(see docs/bundle.md)")
            if name in seen:
                raise ValidationError(f"body: {name!r} appears twice in the archive")
            seen.add(name)
            with archive.open(info) as src, open(out / name, "wb") as dst:
                while chunk := src.read(2**20):
                    total += len(chunk)
                    if total > MAX_UNZIPPED_BYTES:
                        raise ValidationError("body: the archive expands beyond "
                                              f"{MAX_UNZIPPED_BYTES // 2**30} GiB")
                    dst.write(chunk)
    if not seen:
        raise ValidationError("body: the archive holds no bundle file")


def _import(store: Store, data: bytes) -> ImportOut:
    with tempfile.TemporaryDirectory(prefix="bundle-") as tmp:
        try:
            _unpack(data, Path(tmp))
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, RuntimeError,
                NotImplementedError) as exc:  # a damaged or encrypted member
            raise ValidationError(f"body: cannot unzip the archive ({exc})") from None
        try:
            report = import_bundle(store, tmp, show_progress=False)
        except BundleError as exc:
            raise HTTPException(422, {
                "message": str(exc),
                "problems": [{"file": p.file, "line": p.line, "reason": p.reason}
                             for p in exc.problems[:1000]],
            }) from None
    return ImportOut(files={n: c.__dict__ for n, c in report.files.items()},
                     ledger_entries=report.ledger_entries, version=report.version,
                     seconds=round(report.seconds, 3))


BUNDLE_BODY = {"requestBody": {
    "required": True,
    "content": {media: {"schema": {"type": "string", "format": "binary"}}
                for media in ("application/zip", "application/octet-stream")},
    "description": "A zip of bundle files (docs/bundle.md), at its top or in one folder.",
}}


@router.post("/bundles", response_model=ImportOut, openapi_extra=BUNDLE_BODY,
             responses={413: {"description": "the archive is too large"}})
async def post_bundle(request: Request, store: StoreDep,
                      _: Annotated[Principal, Depends(require("data"))]) -> ImportOut:
    """Import a community bundle: validated whole, then merged in one transaction.

    A refused bundle is a 422 listing every problem as file, line and reason; nothing is
    written. Rows naming an erased person are refused.
    """
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BUNDLE_BYTES:
        raise HTTPException(413, f"body: larger than {MAX_BUNDLE_BYTES // 2**20} MiB")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BUNDLE_BYTES:
            raise HTTPException(413, f"body: larger than {MAX_BUNDLE_BYTES // 2**20} MiB")
        chunks.append(chunk)
    return await run_in_threadpool(_import, store, b"".join(chunks))

