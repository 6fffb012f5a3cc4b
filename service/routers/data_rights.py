"""The rights of the people the engine holds data about: access, consent, erasure.

- ``GET /v1/persons/{id}/export`` (data): everything held about the person, lived experience
  included: it is the answer to their own access request, the one place it leaves the engine
  in clear, and only to the data-protection role.
- ``PATCH /v1/persons/{id}/consent`` (data, engineer: a person may tell either): withdrawing
  ``consent_matching`` takes them out of every list from the next request on and withdraws
  their pending offers; withdrawing ``consent_lived_experience`` deletes the tags.
- ``DELETE /v1/persons/{id}`` (data): erasure, see :mod:`graph._rights`. The answer gives
  counts only; the person cannot be imported or created again.

Scope ``data`` is the data-protection role (access, consent, erasure, bundle import); admin
passes every check.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from graph._rights import change_consent, erase_person, export_person
from service.deps import Principal, StoreDep, require
from service.routers._common import ERRORS
from service.schemas import ConsentIn, ConsentOut, ErasureOut, PathId, PersonExport

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["data rights"], responses=ERRORS)

DataOfficer = Annotated[Principal, Depends(require("data"))]


@router.get("/persons/{person_id}/export", response_model=PersonExport)
def export(person_id: PathId, store: StoreDep, _: DataOfficer) -> PersonExport:
    """Everything the store holds about a person (a subject access request)."""
    return PersonExport.model_validate(export_person(store, person_id))


@router.patch("/persons/{person_id}/consent", response_model=ConsentOut)
def consent(person_id: PathId, body: ConsentIn, store: StoreDep,
            _: Annotated[Principal, Depends(require("data", "engineer"))]) -> ConsentOut:
    """Give or withdraw the consent to be matched and to the use of lived experience."""
    change = change_consent(store, person_id, consent_matching=body.consent_matching,
                            consent_lived_experience=body.consent_lived_experience)
    return ConsentOut(**change.__dict__)


@router.delete("/persons/{person_id}", response_model=ErasureOut)
def erase(person_id: PathId, store: StoreDep, _: DataOfficer) -> ErasureOut:
    """Erase a person (right to erasure). Paid outcomes stay, anonymised; a tombstone stops
    the person from being imported again."""
    return ErasureOut(erased=True, **erase_person(store, person_id).to_dict())
