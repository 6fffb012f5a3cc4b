"""SQLAlchemy 2 models of the community store: one table per entity of DESIGN.md.

Times are stored in UTC (naive in the database, aware in Python). Tags (skills, lived
experience) are stored as sorted ``;``-joined strings, exactly as in a bundle.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "BUNDLE_MODELS",
    "Area",
    "AreaLink",
    "Assignment",
    "Base",
    "ChangeJournal",
    "Client",
    "GroupMember",
    "IdempotencyKey",
    "LedgerEntry",
    "Mission",
    "Outcome",
    "OutcomeReview",
    "PeerGroup",
    "Person",
    "Shortlist",
    "ShortlistCandidate",
    "StoreMeta",
    "Tie",
    "Tombstone",
    "Truth",
    "VettingRecord",
    "VocabularyEntry",
    "utcnow",
]


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in Python, naive UTC in the database (SQLite has no zones)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect):  # noqa: ANN001
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: every time must carry a zone")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect):  # noqa: ANN001
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ID = String(64)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class StoreMeta(Base):
    """Key/value facts about the store; ``version`` grows with every committed write."""

    __tablename__ = "store_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class VocabularyEntry(Base):
    """A value a bundle added to an open vocabulary."""

    __tablename__ = "vocabulary"
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[str] = mapped_column(String(64), primary_key=True)
    description: Mapped[str] = mapped_column(Text)
    parent: Mapped[str | None] = mapped_column(String(64))


class Area(Base):
    __tablename__ = "areas"
    area_id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    lat: Mapped[float] = mapped_column(Float)
    lon: Mapped[float] = mapped_column(Float)


class AreaLink(Base):
    __tablename__ = "area_links"
    area_a: Mapped[str] = mapped_column(ForeignKey("areas.area_id"), primary_key=True)
    area_b: Mapped[str] = mapped_column(ForeignKey("areas.area_id"), primary_key=True)
    __table_args__ = (CheckConstraint("area_a < area_b", name="ordered"),)


class Person(Base):
    __tablename__ = "persons"
    person_id: Mapped[str] = mapped_column(ID, primary_key=True)
    area_id: Mapped[str] = mapped_column(ForeignKey("areas.area_id"), index=True)
    joined_at: Mapped[datetime] = mapped_column(UTCDateTime)
    availability_min_per_week: Mapped[int] = mapped_column(Integer)
    max_concurrent: Mapped[int] = mapped_column(Integer)
    skills: Mapped[str | None] = mapped_column(Text)
    # Special-category data: only stored with consent_lived_experience.
    lived_experience: Mapped[str | None] = mapped_column(Text)
    consent_matching: Mapped[bool] = mapped_column(Boolean)
    consent_lived_experience: Mapped[bool] = mapped_column(Boolean)
    __table_args__ = (
        CheckConstraint("availability_min_per_week >= 0", name="availability"),
        CheckConstraint("max_concurrent >= 1", name="capacity"),
        CheckConstraint(
            "consent_lived_experience OR lived_experience IS NULL", name="lived_experience_consent"
        ),
    )


class VettingRecord(Base):
    __tablename__ = "vetting"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    person_id: Mapped[str] = mapped_column(ForeignKey("persons.person_id"), index=True)
    regime: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    valid_from: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reference: Mapped[str | None] = mapped_column(String(128))
    __table_args__ = (UniqueConstraint("person_id", "regime", "valid_from"),)


class Tie(Base):
    __tablename__ = "ties"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    person_a: Mapped[str] = mapped_column(ForeignKey("persons.person_id"), index=True)
    person_b: Mapped[str] = mapped_column(ForeignKey("persons.person_id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    weight: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    __table_args__ = (
        UniqueConstraint("person_a", "person_b", "kind"),
        CheckConstraint("person_a < person_b", name="ordered"),
        CheckConstraint("weight > 0 AND weight <= 1", name="weight"),
    )


class PeerGroup(Base):
    __tablename__ = "groups"
    group_id: Mapped[str] = mapped_column(ID, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class GroupMember(Base):
    __tablename__ = "group_members"
    group_id: Mapped[str] = mapped_column(ForeignKey("groups.group_id"), primary_key=True)
    person_id: Mapped[str] = mapped_column(
        ForeignKey("persons.person_id"), primary_key=True, index=True
    )
    joined_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Client(Base):
    __tablename__ = "clients"
    client_id: Mapped[str] = mapped_column(ID, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(Text)


class Mission(Base):
    __tablename__ = "missions"
    mission_id: Mapped[str] = mapped_column(ID, primary_key=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.client_id"), index=True)
    need_type: Mapped[str] = mapped_column(String(64), index=True)
    area_id: Mapped[str] = mapped_column(ForeignKey("areas.area_id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16), index=True)
    title: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    metric: Mapped[str] = mapped_column(Text)
    direction: Mapped[str] = mapped_column(String(16))
    baseline: Mapped[float] = mapped_column(Float)
    target: Mapped[float] = mapped_column(Float)
    pay_rule: Mapped[str] = mapped_column(String(16))
    unit_price: Mapped[float | None] = mapped_column(Float)
    fee: Mapped[float | None] = mapped_column(Float)
    contract_cap: Mapped[float | None] = mapped_column(Float)
    team_min: Mapped[int] = mapped_column(Integer)
    team_max: Mapped[int] = mapped_column(Integer)
    minutes_per_day: Mapped[int] = mapped_column(Integer)
    days_per_week: Mapped[int] = mapped_column(Integer)
    vetting_regime: Mapped[str | None] = mapped_column(String(32))
    radius_km: Mapped[float | None] = mapped_column(Float)
    __table_args__ = (
        CheckConstraint("team_min >= 1 AND team_max >= team_min", name="team"),
        CheckConstraint("starts_at <= ends_at", name="window"),
    )


class Shortlist(Base):
    """A served list: the decision log and the ground for off-policy evaluation."""

    __tablename__ = "shortlists"
    shortlist_id: Mapped[str] = mapped_column(ID, primary_key=True)
    mission_id: Mapped[str] = mapped_column(ForeignKey("missions.mission_id"), index=True)
    served_at: Mapped[datetime] = mapped_column(UTCDateTime)
    model_version: Mapped[str] = mapped_column(String(128))
    policy: Mapped[str] = mapped_column(String(128))
    requested_by: Mapped[str] = mapped_column(String(128))
    filters: Mapped[str | None] = mapped_column(Text)


class ShortlistCandidate(Base):
    __tablename__ = "shortlist_candidates"
    shortlist_id: Mapped[str] = mapped_column(
        ForeignKey("shortlists.shortlist_id"), primary_key=True
    )
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    person_id: Mapped[str | None] = mapped_column(ForeignKey("persons.person_id"), index=True)
    group_id: Mapped[str | None] = mapped_column(ForeignKey("groups.group_id"), index=True)
    score: Mapped[float] = mapped_column(Float)
    propensity: Mapped[float | None] = mapped_column(Float)
    __table_args__ = (
        CheckConstraint("(person_id IS NULL) <> (group_id IS NULL)", name="one_candidate"),
        CheckConstraint("propensity IS NULL OR (propensity > 0 AND propensity <= 1)",
                        name="propensity"),
    )


class Assignment(Base):
    __tablename__ = "assignments"
    assignment_id: Mapped[str] = mapped_column(ID, primary_key=True)
    mission_id: Mapped[str] = mapped_column(ForeignKey("missions.mission_id"), index=True)
    person_id: Mapped[str | None] = mapped_column(ForeignKey("persons.person_id"), index=True)
    group_id: Mapped[str | None] = mapped_column(ForeignKey("groups.group_id"), index=True)
    shortlist_id: Mapped[str | None] = mapped_column(ForeignKey("shortlists.shortlist_id"))
    assigned_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16))
    propensity: Mapped[float | None] = mapped_column(Float)
    __table_args__ = (
        CheckConstraint("(person_id IS NULL) <> (group_id IS NULL)", name="one_candidate"),
        CheckConstraint("propensity IS NULL OR (propensity > 0 AND propensity <= 1)",
                        name="propensity"),
    )


class Outcome(Base):
    __tablename__ = "outcomes"
    outcome_id: Mapped[str] = mapped_column(ID, primary_key=True)
    assignment_id: Mapped[str] = mapped_column(
        ForeignKey("assignments.assignment_id"), index=True
    )
    measured_at: Mapped[datetime] = mapped_column(UTCDateTime)
    value: Mapped[float] = mapped_column(Float)
    success: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(String(16))
    payout: Mapped[float | None] = mapped_column(Float)


class LedgerEntry(Base):
    """Append-only payout ledger: one row per verified outcome, never updated."""

    __tablename__ = "payout_ledger"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    outcome_id: Mapped[str] = mapped_column(ForeignKey("outcomes.outcome_id"), unique=True)
    mission_id: Mapped[str] = mapped_column(ForeignKey("missions.mission_id"), index=True)
    amount: Mapped[float] = mapped_column(Float)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Truth(Base):
    """Synthetic ground truth (only from simulated bundles), for evaluation."""

    __tablename__ = "truth"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    mission_id: Mapped[str] = mapped_column(ForeignKey("missions.mission_id"), index=True)
    person_id: Mapped[str | None] = mapped_column(ForeignKey("persons.person_id"))
    group_id: Mapped[str | None] = mapped_column(ForeignKey("groups.group_id"))
    p_success: Mapped[float] = mapped_column(Float)
    __table_args__ = (
        UniqueConstraint("mission_id", "person_id", "group_id"),
        CheckConstraint("(person_id IS NULL) <> (group_id IS NULL)", name="one_candidate"),
    )


class OutcomeReview(Base):
    """The audit trail of an outcome claimed through the API: evidence, claim and review.

    Not part of a bundle. ``claimed_by`` and ``reviewed_by`` are API key holders (staff),
    never the person; ``evidence`` is a reference (a register, a report number), cleared when
    the person is erased.
    """

    __tablename__ = "outcome_reviews"
    outcome_id: Mapped[str] = mapped_column(ForeignKey("outcomes.outcome_id"), primary_key=True)
    evidence: Mapped[str | None] = mapped_column(Text)
    claimed_by: Mapped[str] = mapped_column(String(128))
    claimed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    reviewed_by: Mapped[str | None] = mapped_column(String(128))
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    note: Mapped[str | None] = mapped_column(Text)


class IdempotencyKey(Base):
    """An ``Idempotency-Key`` seen on a POST: the request's hash and, once done, the response.

    ``response_json`` is empty while the first request is still running (a concurrent
    duplicate is then refused). Keys belong to the caller (``holder``): two callers never
    share one.
    """

    __tablename__ = "idempotency_keys"
    holder: Mapped[str] = mapped_column(String(128), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    # What the request created (no foreign key: an erasure deletes the key with it).
    outcome_id: Mapped[str | None] = mapped_column(String(64), index=True)
    status_code: Mapped[int | None] = mapped_column(Integer)
    response_json: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class Tombstone(Base):
    """An erased person: a keyed hash of their id, never the id itself.

    The key (``store_meta`` row ``tombstone_salt``) lives in the store, so an import can hash
    the ids it brings and refuse an erased one.
    """

    __tablename__ = "tombstones"
    person_id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    erased_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ChangeJournal(Base):
    """What each store version changed, for serving engines to lay over themselves.

    One row per (version, kind, key): ``kind`` is ``person``, ``group``, ``mission`` or
    ``everything`` (a bundle import: key ``""``). A person's key is a keyed hash of the id
    (:func:`graph._store.person_key`), never the id, so an erased person does not survive
    here. Rows older than ``graph._store.JOURNAL_RETENTION`` are pruned; ``store_meta`` row
    ``journal_from`` is the first version whose changes are all still here.
    """

    __tablename__ = "change_journal"
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


Index("ix_ties_created", Tie.created_at)
Index("ix_outcomes_measured", Outcome.measured_at)

# Bundle file -> the table that stores it (in the bundle's import order).
BUNDLE_MODELS: dict[str, type[Base]] = {
    "vocabulary": VocabularyEntry,
    "areas": Area,
    "area_links": AreaLink,
    "persons": Person,
    "vetting": VettingRecord,
    "ties": Tie,
    "groups": PeerGroup,
    "group_members": GroupMember,
    "clients": Client,
    "missions": Mission,
    "shortlists": Shortlist,
    "shortlist_candidates": ShortlistCandidate,
    "assignments": Assignment,
    "outcomes": Outcome,
    "truth": Truth,
}
