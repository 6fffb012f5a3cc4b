"""Request and response models of the resource endpoints (persons to outcomes).

Every request model refuses unknown fields (``extra="forbid"``) and uses strict types, so a
misspelt or extra field (``payout`` on a claim, say) is a 422 naming it; an integer may be
written ``8`` or ``8.0`` (the same number for JSON Schema), never ``"8"`` or ``true``. Text
refuses NUL characters and lone surrogates (PostgreSQL stores neither), times need a zone and
are kept in UTC, numbers are finite and bounded: no body can reach the store with a value it
refuses.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictStr,
    model_validator,
)

__all__ = [
    "AssignmentIn",
    "AssignmentOut",
    "AssignmentPatch",
    "ClaimIn",
    "ClientIn",
    "ClientOut",
    "ClientPatch",
    "ConsentIn",
    "ConsentOut",
    "ErasureOut",
    "GroupIn",
    "GroupOut",
    "GroupPatch",
    "ImportOut",
    "Int",
    "LedgerOut",
    "MemberIn",
    "MissionIn",
    "MissionOut",
    "MissionPatch",
    "OutcomeOut",
    "PathId",
    "PersonExport",
    "PersonIn",
    "PersonOut",
    "PersonPatch",
    "PersonSummary",
    "ReviewIn",
    "TieIn",
    "TieOut",
    "TiePatch",
    "VettingIn",
    "VettingOut",
    "VettingPatch",
]

# Times outside this range are refused: converting far-off dates between zones overflows.
EARLIEST, LATEST = datetime(1900, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC)


def _text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not valid UTF-8 (a lone surrogate)") from None
    return value


def _utc(value: datetime) -> datetime:
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range") from None
    if not EARLIEST <= utc < LATEST:
        raise ValueError(f"must be between {EARLIEST.year} and {LATEST.year}")
    return utc


def _tags(values: list[str]) -> list[str]:
    return sorted(set(values))


class Forbid(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _whole_number(value: object) -> object:
    # JSON's 8 and 8.0 are the same integer (JSON Schema agrees); "8" and true are not, and
    # 8.5 is refused by the int type itself.
    if isinstance(value, bool | str | bytes):
        raise ValueError("must be a whole number")
    return value


Int = Annotated[int, BeforeValidator(_whole_number)]


def int_between(ge: int, le: int) -> Any:
    """:data:`Int` within ``[ge, le]``, for a field that may also be null: the bounds go on
    the integer itself, or OpenAPI would show them as unknown keywords of the union."""
    return Annotated[int, Field(ge=ge, le=le), BeforeValidator(_whole_number)]
Text = Annotated[StrictStr, AfterValidator(_text)]
# Ids made through the API are plain; ids referenced may come from a bundle (any text).
NewId = Annotated[StrictStr, Field(min_length=1, max_length=64,
                                   pattern=r"^[A-Za-z0-9][A-Za-z0-9._:~-]*$")]
Ref = Annotated[StrictStr, Field(min_length=1, max_length=64), AfterValidator(_text)]
Tag = Annotated[StrictStr, Field(min_length=1, max_length=64,
                                 pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
Tags = Annotated[list[Tag], Field(max_length=50), AfterValidator(_tags)]
Kind = Annotated[StrictStr, Field(min_length=1, max_length=32,
                                  pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
Time = Annotated[AwareDatetime, AfterValidator(_utc)]
Number = Annotated[StrictFloat, Field(allow_inf_nan=False, ge=-1e12, le=1e12)]
Money = Annotated[StrictFloat, Field(allow_inf_nan=False, ge=0, le=1e12)]
PathId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")]

VettingRegime = Literal["minors", "vulnerable_adults"]
VettingStatus = Literal["valid", "pending", "expired", "revoked", "refused"]
MissionStatus = Literal["draft", "open", "staffed", "measuring", "closed"]
AssignmentStatus = Literal["offered", "accepted", "declined", "active", "completed",
                           "withdrawn"]
OutcomeStatus = Literal["claimed", "verified", "disputed", "rejected"]
PayRuleName = Literal["per_unit", "threshold", "linear"]
Direction = Literal["increase", "decrease"]


# --------------------------------------------------------------------------- persons


class PersonIn(Forbid):
    """A new person. ``lived_experience`` only with ``consent_lived_experience``."""

    person_id: NewId | None = Field(None, description="made up when not given")
    area_id: Ref
    joined_at: Time | None = Field(None, description="now when not given")
    availability_min_per_week: Int = Field(ge=0, le=10080)
    max_concurrent: Int = Field(1, ge=1, le=100)
    skills: Tags = []
    lived_experience: Tags = []
    consent_matching: StrictBool
    consent_lived_experience: StrictBool = False

    @model_validator(mode="after")
    def _consent(self) -> PersonIn:
        if self.lived_experience and not self.consent_lived_experience:
            raise ValueError("lived_experience: given without consent_lived_experience; "
                             "such tags are not stored at all")
        return self


class PersonPatch(Forbid):
    """Fields to change; consents change through ``PATCH /v1/persons/{id}/consent``."""

    area_id: Ref | None = None
    availability_min_per_week: int_between(0, 10080) | None = None
    max_concurrent: int_between(1, 100) | None = None
    skills: Tags | None = None
    lived_experience: Tags | None = None


class VettingOut(BaseModel):
    vetting_id: int
    person_id: str
    regime: str
    status: str
    valid_from: datetime
    expires_at: datetime | None
    reference: str | None


class PersonOut(BaseModel):
    """A person. ``lived_experience`` and ``vetting`` are null unless the caller has the
    engineer scope (admin keys included: they read them redacted); ``lived_experience`` also
    needs the person's consent."""

    person_id: str
    area_id: str
    joined_at: datetime
    availability_min_per_week: int
    max_concurrent: int
    skills: list[str]
    consent_matching: bool
    consent_lived_experience: bool
    lived_experience: list[str] | None = None
    vetting: list[VettingOut] | None = None


class PersonSummary(BaseModel):
    person_id: str
    area_id: str
    joined_at: datetime
    consent_matching: bool


class VettingIn(Forbid):
    """A vetting record: regime, status and dates, a reference; never the record itself."""

    regime: VettingRegime
    status: VettingStatus
    valid_from: Time
    expires_at: Time | None = None
    reference: Annotated[Text, Field(max_length=128)] | None = None

    @model_validator(mode="after")
    def _dates(self) -> VettingIn:
        if self.expires_at is not None and self.expires_at < self.valid_from:
            raise ValueError("expires_at: before valid_from")
        return self


class VettingPatch(Forbid):
    status: VettingStatus | None = None
    expires_at: Time | None = None
    reference: Annotated[Text, Field(max_length=128)] | None = None


# --------------------------------------------------------------------------- ties, groups


class TieIn(Forbid):
    person_a: Ref
    person_b: Ref
    kind: Kind
    weight: Annotated[StrictFloat, Field(gt=0, le=1, allow_inf_nan=False)]
    created_at: Time | None = Field(None, description="now when not given")

    @model_validator(mode="after")
    def _pair(self) -> TieIn:
        if self.person_a == self.person_b:
            raise ValueError("person_b: a tie to oneself")
        return self


class TiePatch(Forbid):
    weight: Annotated[StrictFloat, Field(gt=0, le=1, allow_inf_nan=False)]


class TieOut(BaseModel):
    tie_id: int
    person_a: str
    person_b: str
    kind: str
    weight: float
    created_at: datetime


class MemberIn(Forbid):
    person_id: Ref
    joined_at: Time | None = Field(None, description="now (or kept, for a member already "
                                                     "in the group) when not given")


def _members(members: list[MemberIn] | None) -> list[MemberIn] | None:
    if members is None:
        return None
    ids = [m.person_id for m in members]
    if len(set(ids)) != len(ids):
        raise ValueError("members: a person is listed twice")
    return members


Members = Annotated[list[MemberIn], Field(min_length=2, max_length=6), AfterValidator(_members)]


class GroupIn(Forbid):
    """A peer group of 2 to 6 persons."""

    group_id: NewId | None = None
    kind: Kind
    created_at: Time | None = None
    members: Members


class GroupPatch(Forbid):
    """``members`` replaces the whole list (members kept keep their ``joined_at``)."""

    kind: Kind | None = None
    members: Members | None = None


class MemberOut(BaseModel):
    person_id: str
    joined_at: datetime


class GroupOut(BaseModel):
    group_id: str
    kind: str
    created_at: datetime
    members: list[MemberOut]


# --------------------------------------------------------------------------- clients, missions


class ClientIn(Forbid):
    client_id: NewId | None = None
    kind: Kind
    name: Annotated[Text, Field(min_length=1, max_length=200)]


class ClientPatch(Forbid):
    kind: Kind | None = None
    name: Annotated[Text, Field(min_length=1, max_length=200)] | None = None


class ClientOut(BaseModel):
    client_id: str
    kind: str
    name: str


class _MissionFields(Forbid):
    need_type: Kind | None = None
    area_id: Ref | None = None
    starts_at: Time | None = None
    ends_at: Time | None = None
    status: MissionStatus | None = None
    title: Annotated[Text, Field(max_length=300)] | None = None
    description: Annotated[Text, Field(max_length=5000)] | None = None
    metric: Annotated[Text, Field(min_length=1, max_length=200)] | None = None
    direction: Direction | None = None
    baseline: Number | None = None
    target: Number | None = None
    pay_rule: PayRuleName | None = None
    unit_price: Money | None = None
    fee: Money | None = None
    contract_cap: Money | None = None
    team_min: int_between(1, 6) | None = None
    team_max: int_between(1, 6) | None = None
    minutes_per_day: int_between(1, 1440) | None = None
    days_per_week: int_between(1, 7) | None = None
    vetting_regime: VettingRegime | None = None
    radius_km: Annotated[StrictFloat, Field(gt=0, le=1000, allow_inf_nan=False)] | None = None


class MissionIn(Forbid):
    """A new mission of a client (the pay rule decides success and payout; see DESIGN.md)."""

    mission_id: NewId | None = None
    client_id: Ref
    need_type: Kind
    area_id: Ref
    starts_at: Time
    ends_at: Time
    status: MissionStatus = "draft"
    title: Annotated[Text, Field(max_length=300)] = ""
    description: Annotated[Text, Field(max_length=5000)] | None = None
    metric: Annotated[Text, Field(min_length=1, max_length=200)]
    direction: Direction = "increase"
    baseline: Number
    target: Number
    pay_rule: PayRuleName
    unit_price: Money | None = None
    fee: Money | None = None
    contract_cap: Money | None = None
    team_min: Int = Field(1, ge=1, le=6)
    team_max: Int = Field(1, ge=1, le=6)
    minutes_per_day: Int = Field(60, ge=1, le=1440)
    days_per_week: Int = Field(1, ge=1, le=7)
    vetting_regime: VettingRegime | None = None
    radius_km: Annotated[StrictFloat, Field(gt=0, le=1000, allow_inf_nan=False)] | None = None


class MissionPatch(_MissionFields):
    """Fields to change. ``description``, ``unit_price``, ``fee``, ``contract_cap``,
    ``vetting_regime`` and ``radius_km`` may be set to null; the pay terms cannot change once
    an outcome of the mission is verified."""


class MissionOut(BaseModel):
    mission_id: str
    client_id: str
    need_type: str
    area_id: str
    created_at: datetime
    starts_at: datetime
    ends_at: datetime
    status: str
    title: str
    description: str | None
    metric: str
    direction: str
    baseline: float
    target: float
    pay_rule: str
    unit_price: float | None
    fee: float | None
    contract_cap: float | None
    team_min: int
    team_max: int
    minutes_per_day: int
    days_per_week: int
    vetting_regime: str | None
    radius_km: float | None


class FileCountsOut(BaseModel):
    inserted: int
    updated: int
    unchanged: int


class ImportOut(BaseModel):
    files: dict[str, FileCountsOut]
    ledger_entries: int
    version: int
    seconds: float


# --------------------------------------------------------------------------- assignments


class AssignmentIn(Forbid):
    """Offer a mission to a person or a peer group (exactly one). With ``shortlist_id``,
    the candidate must be on that list and the propensity it was served with is logged;
    without, it is a pick by hand (no propensity: unusable off-policy)."""

    mission_id: Ref
    person_id: Ref | None = None
    group_id: Ref | None = None
    shortlist_id: Ref | None = None

    @model_validator(mode="after")
    def _one(self) -> AssignmentIn:
        if (self.person_id is None) == (self.group_id is None):
            raise ValueError("person_id, group_id: give exactly one")
        return self


class AssignmentPatch(Forbid):
    """Move an assignment on: offered -> accepted | declined | withdrawn; accepted ->
    active | withdrawn; active -> completed | withdrawn. Declining and withdrawing are free."""

    status: Literal["accepted", "declined", "active", "completed", "withdrawn"]


class AssignmentOut(BaseModel):
    assignment_id: str
    mission_id: str
    person_id: str | None
    group_id: str | None
    shortlist_id: str | None
    assigned_at: datetime
    status: str
    propensity: float | None


# --------------------------------------------------------------------------- outcomes


class ClaimIn(Forbid):
    """A measured result of an assignment. Success and payout are computed, never given."""

    value: Number
    measured_at: Time
    evidence: Annotated[Text, Field(max_length=500)] | None = Field(
        None, description="a reference to the evidence (a register, a report number)")


class ReviewIn(Forbid):
    note: Annotated[Text, Field(max_length=1000)] | None = None


class OutcomeOut(BaseModel):
    outcome_id: str
    assignment_id: str
    mission_id: str
    measured_at: datetime
    value: float
    success: bool
    status: str
    payout: float | None
    evidence: str | None = None
    claimed_by: str | None = None
    claimed_at: datetime | None = None
    reviewed_by: str | None = None
    reviewed_at: datetime | None = None
    note: str | None = None


class LedgerEntryOut(BaseModel):
    outcome_id: str
    amount: float
    recorded_at: datetime


class LedgerOut(BaseModel):
    mission_id: str
    contract_cap: float | None
    total_paid: float
    entries: list[LedgerEntryOut]


# --------------------------------------------------------------------------- data rights


class ConsentIn(Forbid):
    consent_matching: StrictBool | None = None
    consent_lived_experience: StrictBool | None = None

    @model_validator(mode="after")
    def _some(self) -> ConsentIn:
        if self.consent_matching is None and self.consent_lived_experience is None:
            raise ValueError("consent_matching, consent_lived_experience: give at least one")
        return self


class ConsentOut(BaseModel):
    person_id: str
    consent_matching: bool
    consent_lived_experience: bool
    lived_experience_deleted: bool
    offers_withdrawn: int
    version: int


class ErasureOut(BaseModel):
    """What was removed (counts only). The person's id is in a tombstone as a keyed hash."""

    erased: bool
    vetting_records: int
    ties: int
    memberships: int
    groups_dissolved: int
    assignments_deleted: int
    assignments_anonymised: int
    outcomes_deleted: int
    outcomes_kept_anonymised: int
    shortlist_entries: int
    shortlist_filters_scrubbed: int
    truth_rows: int
    idempotency_keys: int
    version: int


class PersonExport(BaseModel):
    """Everything held about a person (``graph._rights.export_person``)."""

    exported_at: str
    person: dict[str, Any]
    vetting: list[dict[str, Any]]
    ties: list[dict[str, Any]]
    groups: list[dict[str, Any]]
    assignments: list[dict[str, Any]]
    outcomes: list[dict[str, Any]]
    group_assignments: list[dict[str, Any]]
    group_outcomes: list[dict[str, Any]]
    shortlist_appearances: list[dict[str, Any]]
    truth: list[dict[str, Any]]
