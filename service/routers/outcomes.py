"""Outcomes: claimed by an engineer, verified (paid), rejected or disputed by the client.

- ``POST /v1/assignments/{id}/outcomes`` (engineer) claims a measured result. It needs an
  ``Idempotency-Key`` header: a retry with the same key and body returns the first response
  (same status, header ``Idempotent-Replayed: true``), the same key with another body is a
  422, and a duplicate arriving while the first is still running is a 409. Keys belong to
  the caller and are forgotten after 24 hours.
- ``POST /v1/outcomes/{id}/verify|reject|dispute`` (the mission's client, or admin).
  ``claimed -> verified | rejected | disputed``, ``disputed -> verified | rejected``.
  On verification the payout is computed from the mission's pay rule and appended to the
  ledger; nobody sets it. The contract cap holds over the mission's verified outcomes in the
  order they were measured (as for a bundle): the verification runs in one transaction that
  holds the mission (SQLite: the write lock; PostgreSQL: the mission row ``FOR UPDATE``), so
  two verifications of one mission never both spend the same remainder; and an outcome that
  would change what an already verified, later-measured outcome was paid is refused (409)
  rather than rewriting the append-only ledger.
- Reads: engineer, platform, client (its own missions). The ledger: engineer, client.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Annotated
from uuid import uuid4

from fastapi import APIRouter, Depends, Header, HTTPException
from fastapi.responses import JSONResponse
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from graph import NotFoundError, Store
from graph._models import (
    Assignment,
    IdempotencyKey,
    LedgerEntry,
    Mission,
    Outcome,
    OutcomeReview,
)
from graph._payout import CENT, PayRule, payout_for, success_for
from service.deps import Principal, StoreDep, require
from service.routers._common import ERRORS, mission_for, write
from service.routers.assignments import assignment_for
from service.schemas import ClaimIn, LedgerEntryOut, LedgerOut, OutcomeOut, PathId, ReviewIn

__all__ = ["KEY_TTL", "router"]

log = logging.getLogger("bigcrunch.service")

router = APIRouter(prefix="/v1", tags=["outcomes"], responses=ERRORS)

Reader = Annotated[Principal, Depends(require("engineer", "platform", "client"))]
Reviewer = Annotated[Principal, Depends(require("client"))]  # admin passes too

KEY_TTL = timedelta(hours=24)
# A key still without a response after this long belongs to a request that died.
KEY_ABANDONED = timedelta(minutes=5)
CLAIMABLE = ("active", "completed")
CLOCK_SKEW = timedelta(minutes=5)
IdempotencyKeyHeader = Annotated[str, Header(
    alias="Idempotency-Key", min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$",
    description="A key of your choice (printable ASCII, no spaces), new for each claim: "
                "a retry with the same key returns the first result.")]


def outcome_out(s: Session, o: Outcome, mission_id: str) -> OutcomeOut:
    review = s.get(OutcomeReview, o.outcome_id)
    out = OutcomeOut(outcome_id=o.outcome_id, assignment_id=o.assignment_id,
                     mission_id=mission_id, measured_at=o.measured_at, value=o.value,
                     success=o.success, status=o.status, payout=o.payout)
    if review is not None:
        out.evidence, out.note = review.evidence, review.note
        out.claimed_by, out.claimed_at = review.claimed_by, review.claimed_at
        out.reviewed_by, out.reviewed_at = review.reviewed_by, review.reviewed_at
    return out


# --------------------------------------------------------------------------- claims


def _request_hash(assignment_id: str, body: ClaimIn) -> str:
    canonical = json.dumps({"assignment_id": assignment_id, **body.model_dump(mode="json")},
                           sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(row: IdempotencyKey) -> JSONResponse:
    return JSONResponse(json.loads(row.response_json), status_code=row.status_code,
                        headers={"Idempotent-Replayed": "true"})


def _reserve(store: Store, holder: str, key: str, digest: str) -> JSONResponse | None:
    """Take the key for this request (None), or answer from what it already holds."""
    now = datetime.now(UTC)
    try:
        with store.session() as s:
            s.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < now - KEY_TTL))
            row = s.execute(select(IdempotencyKey).where(
                IdempotencyKey.holder == holder, IdempotencyKey.key == key).with_for_update()
            ).scalar_one_or_none()
            if row is None:
                s.add(IdempotencyKey(holder=holder, key=key, request_hash=digest,
                                     created_at=now))
                return None
            if row.request_hash != digest:
                raise HTTPException(422, f"Idempotency-Key: {key!r} was used for another "
                                         "request (a different body or assignment); use a "
                                         "new key")
            if row.response_json is not None:
                return _replay(row)
            if now - row.created_at > KEY_ABANDONED:
                row.created_at = now  # the first request died: this one takes over
                return None
            raise HTTPException(409, f"Idempotency-Key: {key!r}: the same request is still "
                                     "being processed; retry in a moment")
    except IntegrityError:
        # PostgreSQL: a concurrent request inserted the same key first.
        with store.reader() as s:
            row = s.execute(select(IdempotencyKey).where(
                IdempotencyKey.holder == holder, IdempotencyKey.key == key)).scalar_one()
            if row.request_hash != digest:
                raise HTTPException(422, f"Idempotency-Key: {key!r} was used for another "
                                         "request; use a new key") from None
            if row.response_json is not None:
                return _replay(row)
        raise HTTPException(409, f"Idempotency-Key: {key!r}: the same request is still "
                                 "being processed; retry in a moment") from None


def _release(store: Store, holder: str, key: str) -> None:
    """Forget a key whose request failed, so that a corrected retry can run."""
    try:
        with store.session() as s:
            s.execute(delete(IdempotencyKey).where(IdempotencyKey.holder == holder,
                                                   IdempotencyKey.key == key,
                                                   IdempotencyKey.response_json.is_(None)))
    except Exception as exc:  # noqa: BLE001 - the key is then taken over once abandoned
        log.warning("could not release an idempotency key: %s", type(exc).__name__)


def record_claim(store: Store, principal: Principal, assignment_id: str, body: ClaimIn,
                 holder: str, key: str) -> OutcomeOut:
    """Write the claimed outcome and, in the same transaction, the key's response."""
    now = datetime.now(UTC)
    with write(store, "outcome") as s:
        a, mission = assignment_for(s, principal, assignment_id, lock=True)
        if a.status not in CLAIMABLE:
            raise HTTPException(409, f"assignment {assignment_id!r} is {a.status}; outcomes "
                                     "are claimed on active or completed assignments")
        if body.measured_at < a.assigned_at:
            raise HTTPException(422, f"measured_at: before the assignment was made "
                                     f"({a.assigned_at.isoformat()})")
        if body.measured_at > now + CLOCK_SKEW:
            raise HTTPException(422, "measured_at: in the future")
        outcome = Outcome(outcome_id=f"O-{uuid4().hex[:16]}", assignment_id=assignment_id,
                          measured_at=body.measured_at, value=body.value,
                          success=success_for(PayRule.of(mission), body.value), status="claimed",
                          payout=None)
        s.add(outcome)
        s.flush()
        s.add(OutcomeReview(outcome_id=outcome.outcome_id, evidence=body.evidence,
                            claimed_by=principal.holder, claimed_at=now))
        s.flush()
        out = outcome_out(s, outcome, mission.mission_id)
        row = s.execute(select(IdempotencyKey).where(
            IdempotencyKey.holder == holder, IdempotencyKey.key == key)).scalar_one_or_none()
        if row is not None:
            row.outcome_id = outcome.outcome_id
            row.status_code = 201
            row.response_json = out.model_dump_json()
        # Track records only: no hard rule moves, so serving engines need not leave anyone
        # out; they pick the new history up at their next rebuild.
        Store.bump_version(s, everything=False)
        return out


@router.post("/assignments/{assignment_id}/outcomes", status_code=201,
             response_model=OutcomeOut)
def claim(assignment_id: PathId, body: ClaimIn, store: StoreDep,
          principal: Annotated[Principal, Depends(require("engineer"))],
          idempotency_key: IdempotencyKeyHeader) -> OutcomeOut | JSONResponse:
    """Claim a measured outcome of an active or completed assignment.

    Success is computed from the mission's pay rule; the payout waits for verification.
    """
    holder = f"{principal.scope}:{principal.holder}"
    replay = _reserve(store, holder, idempotency_key, _request_hash(assignment_id, body))
    if replay is not None:
        return replay
    try:
        return record_claim(store, principal, assignment_id, body, holder, idempotency_key)
    except BaseException:
        _release(store, holder, idempotency_key)
        raise


# --------------------------------------------------------------------------- reviews


def _payout(s: Session, mission: Mission, outcome: Outcome) -> float:
    """What ``outcome`` earns, the contract cap applied in measurement order; 409 if that
    would change what a verified, later-measured outcome was already paid."""
    rule = PayRule.of(mission)
    verified = s.execute(
        select(Outcome.outcome_id, Outcome.measured_at, Outcome.value, Outcome.payout)
        .join(Assignment, Assignment.assignment_id == Outcome.assignment_id)
        .where(Assignment.mission_id == mission.mission_id, Outcome.status == "verified")
        .order_by(Outcome.measured_at, Outcome.outcome_id)).all()
    me = (outcome.measured_at, outcome.outcome_id)
    before = [r for r in verified if (r.measured_at, r.outcome_id) < me]
    after = [r for r in verified if (r.measured_at, r.outcome_id) > me]
    paid_before = sum(r.payout or 0.0 for r in before)
    due = payout_for(rule, outcome.value, already_paid=paid_before)
    running = paid_before + due
    for r in after:
        would = payout_for(rule, r.value, already_paid=running)
        if abs(would - (r.payout or 0.0)) > CENT:
            raise HTTPException(409, f"outcome {outcome.outcome_id!r} was measured before "
                                     f"outcome {r.outcome_id!r}, already paid {r.payout}; under "
                                     "the contract cap verifying it would change that payout")
        running += r.payout or 0.0
    if rule.contract_cap is not None:  # belt and braces: the cap is never exceeded
        total = sum(r.payout or 0.0 for r in verified)
        due = round(min(due, max(0.0, rule.contract_cap - total)), 2)
    return due


def _review(store: Store, principal: Principal, outcome_id: str, to: str,
            body: ReviewIn) -> OutcomeOut:
    allowed = {"verified": ("claimed", "disputed"), "rejected": ("claimed", "disputed"),
               "disputed": ("claimed",)}[to]
    now = datetime.now(UTC)
    with write(store, f"outcome {outcome_id!r}") as s:
        found = s.execute(select(Outcome.assignment_id).where(Outcome.outcome_id == outcome_id)
                          ).first()
        if found is None:
            raise NotFoundError(f"outcome {outcome_id!r} is not in the store")
        a = s.get(Assignment, found[0])
        try:
            # Lock the mission first: every verification of one mission queues here.
            mission = mission_for(s, principal, a.mission_id, lock=True)
        except NotFoundError:
            raise NotFoundError(f"outcome {outcome_id!r} is not in the store") from None
        outcome = s.execute(select(Outcome).where(Outcome.outcome_id == outcome_id)
                            .with_for_update().execution_options(populate_existing=True)
                            ).scalar_one()
        if outcome.status not in allowed:
            raise HTTPException(409, f"outcome {outcome_id!r} is {outcome.status}; only "
                                     f"{' or '.join(allowed)} outcomes can be {to}")
        if to == "verified":
            outcome.success = success_for(PayRule.of(mission), outcome.value)
            outcome.payout = _payout(s, mission, outcome)
            s.add(LedgerEntry(outcome_id=outcome_id, mission_id=mission.mission_id,
                              amount=outcome.payout, recorded_at=now))
        outcome.status = to
        review = s.get(OutcomeReview, outcome_id)
        if review is None:  # an outcome that came in a bundle
            review = OutcomeReview(outcome_id=outcome_id, claimed_by="bundle import",
                                   claimed_at=outcome.measured_at)
            s.add(review)
        review.reviewed_by, review.reviewed_at, review.note = principal.holder, now, body.note
        s.flush()
        Store.bump_version(s, everything=False)  # track records only (see record_claim)
        return outcome_out(s, outcome, mission.mission_id)


@router.post("/outcomes/{outcome_id}/verify", response_model=OutcomeOut)
def verify(outcome_id: PathId, body: ReviewIn, store: StoreDep,
           principal: Reviewer) -> OutcomeOut:
    """Verify a claimed (or disputed) outcome: it is paid by the pay rule, under the cap."""
    return _review(store, principal, outcome_id, "verified", body)


@router.post("/outcomes/{outcome_id}/reject", response_model=OutcomeOut)
def reject(outcome_id: PathId, body: ReviewIn, store: StoreDep,
           principal: Reviewer) -> OutcomeOut:
    """Reject a claimed (or disputed) outcome: it is not paid."""
    return _review(store, principal, outcome_id, "rejected", body)


@router.post("/outcomes/{outcome_id}/dispute", response_model=OutcomeOut)
def dispute(outcome_id: PathId, body: ReviewIn, store: StoreDep,
            principal: Reviewer) -> OutcomeOut:
    """Dispute a claimed outcome (then verify or reject it once settled)."""
    return _review(store, principal, outcome_id, "disputed", body)


# --------------------------------------------------------------------------- reads


@router.get("/outcomes/{outcome_id}", response_model=OutcomeOut)
def get_outcome(outcome_id: PathId, store: StoreDep, principal: Reader) -> OutcomeOut:
    with store.reader() as s:
        outcome = s.get(Outcome, outcome_id)
        if outcome is None:
            raise NotFoundError(f"outcome {outcome_id!r} is not in the store")
        a = s.get(Assignment, outcome.assignment_id)
        try:
            mission_for(s, principal, a.mission_id)
        except NotFoundError:
            raise NotFoundError(f"outcome {outcome_id!r} is not in the store") from None
        return outcome_out(s, outcome, a.mission_id)


@router.get("/missions/{mission_id}/outcomes", response_model=list[OutcomeOut])
def mission_outcomes(mission_id: PathId, store: StoreDep,
                     principal: Reader) -> list[OutcomeOut]:
    """Every outcome of a mission, in the order measured."""
    with store.reader() as s:
        mission_for(s, principal, mission_id)
        rows = s.execute(select(Outcome).join(Assignment, Assignment.assignment_id
                                              == Outcome.assignment_id)
                         .where(Assignment.mission_id == mission_id)
                         .order_by(Outcome.measured_at, Outcome.outcome_id)).scalars()
        return [outcome_out(s, o, mission_id) for o in rows]


@router.get("/missions/{mission_id}/ledger", response_model=LedgerOut)
def mission_ledger(mission_id: PathId, store: StoreDep,
                   principal: Annotated[Principal, Depends(require("engineer", "client"))]
                   ) -> LedgerOut:
    """The payouts of a mission (append-only) and their total against the contract cap."""
    with store.reader() as s:
        mission = mission_for(s, principal, mission_id)
        entries = list(s.execute(select(LedgerEntry).where(LedgerEntry.mission_id == mission_id)
                                 .order_by(LedgerEntry.id)).scalars())
        return LedgerOut(mission_id=mission_id, contract_cap=mission.contract_cap,
                         total_paid=round(sum(e.amount for e in entries), 2),
                         entries=[LedgerEntryOut(outcome_id=e.outcome_id, amount=e.amount,
                                                 recorded_at=e.recorded_at) for e in entries])
