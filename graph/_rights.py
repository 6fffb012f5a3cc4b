"""The rights of the people in the store: access (export), consent and erasure.

- :func:`export_person`: everything the store holds about one person, as plain JSON-ready data
  (the answer to a subject access request).
- :func:`change_consent`: the two consents of DESIGN.md. Withdrawing ``consent_matching``
  takes the person out of every list served from then on (the change is journaled with the
  store version: every serving engine leaves the person out from its next request, before
  it is rebuilt) and withdraws their pending offers; withdrawing
  ``consent_lived_experience`` deletes the stored tags (they are never kept without it).
- :func:`erase_person`: the right to erasure. The person, their ties, memberships, vetting
  records, decision-log entries (shortlist candidates, ids in a list's filters), synthetic
  truth rows, unpaid assignments and outcomes, and the idempotency keys of their claims go.
  Paid outcomes (verified, or with a ledger entry) cannot go: the payout ledger is
  append-only and the client's invoice rests on it. Their assignment is re-pointed at a fresh
  pseudonymous person (``erased-<random>``, one per assignment, so two of them cannot be
  linked), who lives in the mission's area, joined at the time of the erasure (so that no
  snapshot before it, hence no training row, sees them), has no skills, no lived experience
  and no consent to be matched; the evidence text of those outcomes is cleared. A peer group
  left with fewer than 2 members is dissolved the same way (it was partly the erased person).
  Last, a tombstone (a keyed hash of the id, never the id) stops an import or the API from
  bringing the person back. The change journal, too, names the person by a keyed hash only.

The tombstone key is a random secret made by the migration that created the table, kept in
``store_meta``; the hash hides the id from a reader of the tombstone table and links nothing
across stores, but anyone holding the store and a guess of an id can test the guess (as the
import must).

Examples
--------
>>> from graph import open_store
>>> from graph._rights import erase_person, export_person  # doctest: +SKIP
>>> data = export_person(store, "P1")  # doctest: +SKIP
>>> report = erase_person(store, "P1")  # doctest: +SKIP
>>> report.assignments_anonymised  # doctest: +SKIP
1
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, delete, func, or_, select, update
from sqlalchemy.orm import Session

from graph._errors import NotFoundError
from graph._models import (
    Assignment,
    GroupMember,
    IdempotencyKey,
    LedgerEntry,
    Mission,
    Outcome,
    OutcomeReview,
    PeerGroup,
    Person,
    Shortlist,
    ShortlistCandidate,
    Tie,
    Tombstone,
    Truth,
    VettingRecord,
)
from graph._store import Store, store_secret

__all__ = [
    "ERASED_PREFIX",
    "ConsentChange",
    "ErasureReport",
    "change_consent",
    "erase_person",
    "export_person",
    "is_tombstoned",
    "tombstone_hash",
    "tombstoned_ids",
]

ERASED_PREFIX = "erased-"
SALT_KEY = "tombstone_salt"
MIN_GROUP = 2  # a peer group has 2 to 6 members: below 2 it is dissolved


# --------------------------------------------------------------------------- tombstones


def tombstone_hash(salt: str, person_id: str) -> str:
    """The keyed hash (HMAC-SHA256, hex) a tombstone holds instead of the id.

    Examples
    --------
    >>> len(tombstone_hash("k", "P1"))
    64
    >>> tombstone_hash("k", "P1") == tombstone_hash("other key", "P1")
    False
    """
    return hmac.new(salt.encode(), person_id.encode(), hashlib.sha256).hexdigest()


def _salt(s: Session | Connection, create: bool = False) -> str | None:
    # One secret per store for every keyed hash of an id (tombstones, change journal).
    return store_secret(s, create=create)


def tombstoned_ids(s: Session | Connection, ids: Iterable[str]) -> set[str]:
    """Which of ``ids`` belong to erased persons (``s``: a session or a connection).

    Cheap when nobody was ever erased (one count); otherwise each distinct id is hashed once.
    """
    if not s.execute(select(func.count()).select_from(Tombstone)).scalar_one():
        return set()
    salt = _salt(s)
    if salt is None:
        return set()
    hashes = set(s.execute(select(Tombstone.person_id_hash)).scalars())
    return {i for i in set(ids) if tombstone_hash(salt, i) in hashes}


def is_tombstoned(s: Session | Connection, person_id: str) -> bool:
    """Whether ``person_id`` was erased (and so may not come back)."""
    return bool(tombstoned_ids(s, [person_id]))


# --------------------------------------------------------------------------- export


def _iso(t: datetime | None) -> str | None:
    if t is None:
        return None
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _row(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """A model instance as JSON-ready data (times as ISO 8601 UTC)."""
    out = {}
    for col in obj.__table__.columns:
        if col.key in skip:
            continue
        value = getattr(obj, col.key)
        out[col.key] = _iso(value) if isinstance(value, datetime) else value
    return out


def _tags(value: str | None) -> list[str]:
    return value.split(";") if value else []


def _outcomes_with_audit(s: Session, assignment_ids: list[str]) -> list[dict[str, Any]]:
    if not assignment_ids:
        return []
    rows = s.execute(
        select(Outcome, OutcomeReview, LedgerEntry)
        .outerjoin(OutcomeReview, OutcomeReview.outcome_id == Outcome.outcome_id)
        .outerjoin(LedgerEntry, LedgerEntry.outcome_id == Outcome.outcome_id)
        .where(Outcome.assignment_id.in_(assignment_ids))
        .order_by(Outcome.measured_at, Outcome.outcome_id)
    ).all()
    out = []
    for outcome, review, ledger in rows:
        item = _row(outcome)
        item["review"] = _row(review, skip=("outcome_id",)) if review is not None else None
        item["ledger"] = (_row(ledger, skip=("id", "outcome_id"))
                          if ledger is not None else None)
        out.append(item)
    return out


def export_person(store: Store, person_id: str) -> dict[str, Any]:
    """Everything the store holds about one person, as JSON-ready data.

    Lived experience is included (it is the person's own data, and this is their access
    request): the caller must only hand it to the data-protection role.

    Raises
    ------
    NotFoundError
        No such person.
    """
    with store.reader() as s:
        person = s.get(Person, person_id)
        if person is None:
            raise NotFoundError(f"person {person_id!r} is not in the store")
        data = _row(person)
        data["skills"] = _tags(person.skills)
        data["lived_experience"] = _tags(person.lived_experience)
        vetting = s.execute(select(VettingRecord).where(VettingRecord.person_id == person_id)
                            .order_by(VettingRecord.valid_from, VettingRecord.id)).scalars()
        ties = s.execute(select(Tie).where(or_(Tie.person_a == person_id,
                                               Tie.person_b == person_id))
                         .order_by(Tie.created_at, Tie.id)).scalars()
        memberships = s.execute(
            select(GroupMember, PeerGroup).join(PeerGroup, PeerGroup.group_id
                                                == GroupMember.group_id)
            .where(GroupMember.person_id == person_id).order_by(GroupMember.group_id)).all()
        group_ids = [m.group_id for m, _ in memberships]
        own = list(s.execute(select(Assignment).where(Assignment.person_id == person_id)
                             .order_by(Assignment.assigned_at, Assignment.assignment_id))
                   .scalars())
        of_groups = list(s.execute(
            select(Assignment).where(Assignment.group_id.in_(group_ids))
            .order_by(Assignment.assigned_at, Assignment.assignment_id)).scalars()
        ) if group_ids else []
        listed = s.execute(
            select(ShortlistCandidate, Shortlist)
            .join(Shortlist, Shortlist.shortlist_id == ShortlistCandidate.shortlist_id)
            .where(ShortlistCandidate.person_id == person_id)
            .order_by(Shortlist.served_at, Shortlist.shortlist_id)).all()
        truth = s.execute(select(Truth).where(Truth.person_id == person_id)
                          .order_by(Truth.mission_id)).scalars()
        return {
            "exported_at": _iso(datetime.now(UTC)),
            "person": data,
            "vetting": [_row(v, skip=("person_id",)) for v in vetting],
            "ties": [
                {"tie_id": t.id,
                 "other_person_id": t.person_b if t.person_a == person_id else t.person_a,
                 "kind": t.kind, "weight": t.weight, "created_at": _iso(t.created_at)}
                for t in ties
            ],
            "groups": [{"group_id": g.group_id, "kind": g.kind, "created_at": _iso(g.created_at),
                        "joined_at": _iso(m.joined_at)} for m, g in memberships],
            "assignments": [_row(a) for a in own],
            "outcomes": _outcomes_with_audit(s, [a.assignment_id for a in own]),
            "group_assignments": [_row(a) for a in of_groups],
            "group_outcomes": _outcomes_with_audit(s, [a.assignment_id for a in of_groups]),
            "shortlist_appearances": [
                {"shortlist_id": sl.shortlist_id, "mission_id": sl.mission_id,
                 "served_at": _iso(sl.served_at), "model_version": sl.model_version,
                 "policy": sl.policy, "rank": c.rank, "score": c.score,
                 "propensity": c.propensity}
                for c, sl in listed
            ],
            "truth": [{"mission_id": t.mission_id, "p_success": t.p_success} for t in truth],
        }


# --------------------------------------------------------------------------- consent


@dataclass(frozen=True)
class ConsentChange:
    """The consents after a change, and what the change did."""

    person_id: str
    consent_matching: bool
    consent_lived_experience: bool
    lived_experience_deleted: bool
    offers_withdrawn: int
    version: int


def change_consent(store: Store, person_id: str, consent_matching: bool | None = None,
                   consent_lived_experience: bool | None = None) -> ConsentChange:
    """Give or withdraw a person's consents (None leaves one as it is).

    Withdrawing ``consent_matching`` withdraws the person's pending offers (assignments
    still ``offered``; accepted and active ones stay: the person is at work) and, through
    the store version, takes them out of every list served afterwards. Withdrawing
    ``consent_lived_experience`` deletes their lived-experience tags.
    """
    with store.session() as s:
        person = s.execute(select(Person).where(Person.person_id == person_id)
                           .with_for_update()).scalar_one_or_none()
        if person is None:
            raise NotFoundError(f"person {person_id!r} is not in the store")
        changed = False
        deleted = False
        withdrawn = 0
        if consent_lived_experience is not None \
                and consent_lived_experience != person.consent_lived_experience:
            if not consent_lived_experience:
                deleted = person.lived_experience is not None
                person.lived_experience = None
            person.consent_lived_experience = consent_lived_experience
            changed = True
        if consent_matching is not None and consent_matching != person.consent_matching:
            person.consent_matching = consent_matching
            changed = True
            if not consent_matching:
                withdrawn = s.execute(
                    update(Assignment)
                    .where(Assignment.person_id == person_id, Assignment.status == "offered")
                    .values(status="withdrawn")
                ).rowcount
        s.flush()
        version = Store.bump_version(s, persons=[person_id]) if changed else None
        result = (person.person_id, person.consent_matching, person.consent_lived_experience)
    return ConsentChange(*result, lived_experience_deleted=deleted, offers_withdrawn=withdrawn,
                         version=version if version is not None else store.version())


# --------------------------------------------------------------------------- erasure


@dataclass
class ErasureReport:
    """What an erasure removed (counts only: the report names nobody)."""

    vetting_records: int = 0
    ties: int = 0
    memberships: int = 0
    groups_dissolved: int = 0
    assignments_deleted: int = 0
    assignments_anonymised: int = 0
    outcomes_deleted: int = 0
    outcomes_kept_anonymised: int = 0
    shortlist_entries: int = 0
    shortlist_filters_scrubbed: int = 0
    truth_rows: int = 0
    idempotency_keys: int = 0
    version: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _scrub(value: Any, person_id: str) -> Any:
    """``value`` (decoded JSON) with every occurrence of ``person_id`` removed."""
    if isinstance(value, list):
        return [_scrub(v, person_id) for v in value if v != person_id]
    if isinstance(value, dict):
        return {k: (None if v == person_id else _scrub(v, person_id))
                for k, v in value.items() if k != person_id}
    return value


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _pseudonym(s: Session, mission_id: str, now: datetime) -> str:
    """A new person standing for an erased one on one paid assignment."""
    area = s.execute(select(Mission.area_id).where(Mission.mission_id == mission_id)
                     ).scalar_one()
    pid = f"{ERASED_PREFIX}{secrets.token_hex(8)}"
    s.add(Person(person_id=pid, area_id=area, joined_at=now, availability_min_per_week=0,
                 max_concurrent=1, skills=None, lived_experience=None, consent_matching=False,
                 consent_lived_experience=False))
    s.flush()
    return pid


def _release_assignments(s: Session, where: Any, now: datetime, report: ErasureReport) -> None:
    """Unpaid assignments (of ``where``) go with their outcomes; paid ones get a pseudonym."""
    assignments = list(s.execute(select(Assignment).where(where)).scalars())
    if not assignments:
        return
    ids = [a.assignment_id for a in assignments]
    outcomes = s.execute(
        select(Outcome.outcome_id, Outcome.assignment_id, Outcome.status,
               LedgerEntry.outcome_id.is_not(None))
        .outerjoin(LedgerEntry, LedgerEntry.outcome_id == Outcome.outcome_id)
        .where(Outcome.assignment_id.in_(ids))).all()
    paid = {o for o, _, status, in_ledger in outcomes if status == "verified" or in_ledger}
    unpaid = [o for o, _, _, _ in outcomes if o not in paid]
    all_outcomes = [o for o, *_ in outcomes]
    if all_outcomes:
        report.idempotency_keys += s.execute(
            delete(IdempotencyKey).where(IdempotencyKey.outcome_id.in_(all_outcomes))).rowcount
    if unpaid:
        s.execute(delete(OutcomeReview).where(OutcomeReview.outcome_id.in_(unpaid)))
        report.outcomes_deleted += s.execute(
            delete(Outcome).where(Outcome.outcome_id.in_(unpaid))).rowcount
    if paid:
        s.execute(update(OutcomeReview).where(OutcomeReview.outcome_id.in_(paid))
                  .values(evidence=None, note=None))
        report.outcomes_kept_anonymised += len(paid)
    keep = {a for o, a, _, _ in outcomes if o in paid}
    for a in assignments:
        if a.assignment_id in keep:
            a.person_id = _pseudonym(s, a.mission_id, now)
            a.group_id = None
            report.assignments_anonymised += 1
        else:
            s.delete(a)
            report.assignments_deleted += 1
    s.flush()


def _dissolve_group(s: Session, group_id: str, now: datetime, report: ErasureReport) -> None:
    s.execute(delete(GroupMember).where(GroupMember.group_id == group_id))
    _release_assignments(s, Assignment.group_id == group_id, now, report)
    report.shortlist_entries += s.execute(
        delete(ShortlistCandidate).where(ShortlistCandidate.group_id == group_id)).rowcount
    report.truth_rows += s.execute(delete(Truth).where(Truth.group_id == group_id)).rowcount
    s.execute(delete(PeerGroup).where(PeerGroup.group_id == group_id))
    report.groups_dissolved += 1


def _scrub_idempotency_keys(s: Session, person_id: str) -> int:
    """Keys that name the person (callers may build keys from ids)."""
    pattern = re.compile(rf"(?<![A-Za-z0-9]){re.escape(person_id)}(?![A-Za-z0-9])")
    rows = s.execute(select(IdempotencyKey.holder, IdempotencyKey.key)
                     .where(IdempotencyKey.key.like(_like(person_id), escape="\\"))).all()
    hits = [(h, k) for h, k in rows if pattern.search(k)]
    for holder, key in hits:
        s.execute(delete(IdempotencyKey).where(IdempotencyKey.holder == holder,
                                               IdempotencyKey.key == key))
    return len(hits)


def erase_person(store: Store, person_id: str) -> ErasureReport:
    """Erase a person (see the module docstring for what goes and what is kept).

    Runs in one write transaction: all of it happens, or nothing.

    Raises
    ------
    NotFoundError
        No such person (an erased one included).
    """
    report = ErasureReport()
    now = datetime.now(UTC)
    with store.session() as s:
        person = s.execute(select(Person).where(Person.person_id == person_id)
                           .with_for_update()).scalar_one_or_none()
        if person is None:
            raise NotFoundError(f"person {person_id!r} is not in the store")
        salt = _salt(s, create=True)
        groups = list(s.execute(select(GroupMember.group_id)
                                .where(GroupMember.person_id == person_id)).scalars())
        # Whom the erasure changes for matching: the person, their groups and those groups'
        # other members (a membership, a dissolved group's assignments and capacity).
        touched = {person_id}
        if groups:
            touched |= set(s.execute(select(GroupMember.person_id).where(
                GroupMember.group_id.in_(groups))).scalars())
        report.memberships = s.execute(
            delete(GroupMember).where(GroupMember.person_id == person_id)).rowcount
        for group_id in groups:
            left = s.execute(select(func.count()).select_from(GroupMember)
                             .where(GroupMember.group_id == group_id)).scalar_one()
            if left < MIN_GROUP:
                _dissolve_group(s, group_id, now, report)
        _release_assignments(s, Assignment.person_id == person_id, now, report)
        report.shortlist_entries += s.execute(
            delete(ShortlistCandidate).where(ShortlistCandidate.person_id == person_id)
        ).rowcount
        for shortlist in s.execute(select(Shortlist).where(
                Shortlist.filters.like(_like(person_id), escape="\\"))).scalars():
            try:
                decoded = json.loads(shortlist.filters)
            except ValueError:
                decoded = None
            if decoded is None:
                continue
            scrubbed = _scrub(decoded, person_id)
            if scrubbed != decoded:
                shortlist.filters = json.dumps(scrubbed, sort_keys=True)
                report.shortlist_filters_scrubbed += 1
        report.truth_rows += s.execute(delete(Truth).where(Truth.person_id == person_id)
                                       ).rowcount
        report.vetting_records = s.execute(
            delete(VettingRecord).where(VettingRecord.person_id == person_id)).rowcount
        report.ties = s.execute(delete(Tie).where(or_(Tie.person_a == person_id,
                                                      Tie.person_b == person_id))).rowcount
        report.idempotency_keys += _scrub_idempotency_keys(s, person_id)
        s.delete(person)
        s.flush()
        s.merge(Tombstone(person_id_hash=tombstone_hash(salt, person_id), erased_at=now))
        report.version = Store.bump_version(s, persons=touched, groups=groups)
    return report
