"""Mission engineers' endpoints: the shortlist with reasons, open missions for a person,
allocation over every open mission, and the model reload.

The shortlist is the same policy as ``POST /v1/match`` (every list goes to the decision log,
each re-ask included) plus what an engineer needs to choose: members, reasons, team
suggestions from ties, and the filters applied, with ``exclude`` and ``pin``. Reasons derived
from lived experience (special-category data) are shown only to the ``engineer`` scope and
only for persons who consented to its use.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from starlette.concurrency import run_in_threadpool

from graph import ValidationError
from matching._allocation_wiring import allocate_open_missions, allocation_report_json
from matching._teams import missions_for, suggest_teams
from service._provider import EngineProvider
from service.deps import Principal, StoreDep, require
from service.routers.match import ERRORS, Int, engine_for, serve_list, wait_for_rebuild
from service.schemas import PathId, Ref

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["engineers"], responses=ERRORS)

Engineer = Annotated[Principal, Depends(require("engineer"))]
EngineerOrPlatform = Annotated[Principal, Depends(require("engineer", "platform"))]
DataOfficer = Annotated[Principal, Depends(require("data"))]


def _special(principal: Principal) -> bool:
    # Only the engineer scope reads reasons from lived experience (admin keys do not).
    return principal.scope == "engineer"


# ---------------------------------------------------------------------------- shortlist


class ShortlistRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    k: Int = Field(10, ge=1, le=100, description="length of the list")
    exclude: list[Ref] = Field([], max_length=1000,
                               description="persons or groups left out (a hard rule)")
    pin: list[Ref] = Field([], max_length=20, description=(
        "eligible persons or groups placed first whatever their score (propensity 1)"))
    teams: Int = Field(3, ge=0, le=20, description=(
        "most team suggestions from ties (missions taking two or more; 0: none)"))


class ShortlistCandidateOut(BaseModel):
    rank: int
    id: str
    kind: Literal["person", "group"]
    members: list[str]
    score: float = Field(description="calibrated P(success)")
    propensity: float = Field(description="probability that this policy lists the candidate")
    expected_payout: float
    newcomer: bool
    reasons: list[str]


class TeamOut(BaseModel):
    rank: int
    members: list[str]
    score: float
    p_team: float
    member_scores: list[float]
    expected_payout: float
    tie_strength: float
    proven: list[str]
    newcomers: list[str]
    why: str


class ShortlistOut(BaseModel):
    shortlist_id: str
    mission_id: str
    model_version: str
    policy: str
    filters: dict[str, object]
    candidates: list[ShortlistCandidateOut]
    teams: list[TeamOut]


@router.post("/missions/{mission_id}/shortlist", response_model=ShortlistOut)
async def shortlist(mission_id: PathId, body: ShortlistRequest, request: Request,
                    store: StoreDep, principal: Engineer) -> ShortlistOut:
    """A mission engineer's shortlist: candidates with members and reasons, team
    suggestions, and the filters applied; logged in the decision log."""

    def serve() -> ShortlistOut:
        engine, loaded = engine_for(request)
        mission = engine.mission(mission_id)  # 404 for an unknown id
        wait_for_rebuild(request, engine, body.pin, "pin")
        try:
            result = engine.shortlist(mission_id, k=body.k, exclude=body.exclude, pin=body.pin,
                                      allow_special_category=_special(principal))
        except ValidationError as exc:  # pins that fail a hard rule
            raise ValidationError(f"pin: {exc}") from None
        teams = (suggest_teams(engine, mission_id, k=body.teams, exclude=body.exclude)
                 if body.teams and int(mission["team_max"]) >= 2 else [])
        result, sid = serve_list(store, loaded, result, principal, "shortlist", stored=True,
                                 engine=engine)
        return ShortlistOut(
            shortlist_id=sid, mission_id=mission_id, model_version=loaded.version,
            policy=result.policy, filters=result.filters,
            candidates=[ShortlistCandidateOut(
                rank=c.rank, id=c.candidate_id, kind=c.kind, members=c.members, score=c.score,
                propensity=c.propensity, expected_payout=c.expected_payout,
                newcomer=c.newcomer, reasons=c.reasons) for c in result.candidates],
            teams=[TeamOut(rank=t.rank, members=list(t.members), score=t.score, p_team=t.p_team,
                           member_scores=list(t.member_scores),
                           expected_payout=t.expected_payout, tie_strength=t.tie_strength,
                           proven=list(t.proven), newcomers=list(t.newcomers), why=t.why)
                   for t in teams])

    return await run_in_threadpool(serve)


# ------------------------------------------------------------------ missions for a person


class MissionsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    k: Int = Field(10, ge=1, le=100, description="most missions returned")
    with_groups: StrictBool = Field(True, description=(
        "also missions the person may take only with one of their peer groups"))


class OfferOut(BaseModel):
    rank: int
    mission_id: str
    need_type: str
    score: float
    expected_payout: float
    distance_km: float | None
    kind: Literal["person", "group"]
    candidate_id: str
    reasons: list[str]


class OffersOut(BaseModel):
    person_id: str
    model_version: str
    missions: list[OfferOut]


@router.post("/persons/{person_id}/missions", response_model=OffersOut)
async def person_missions(person_id: PathId, body: MissionsRequest, request: Request,
                          principal: EngineerOrPlatform) -> OffersOut:
    """Open missions a person may take, best first (every hard rule applied)."""

    def serve() -> OffersOut:
        engine, loaded = engine_for(request)
        wait_for_rebuild(request, engine, [person_id], "person_id")
        offers = missions_for(engine, person_id, k=body.k, with_groups=body.with_groups,
                              allow_special_category=_special(principal))
        return OffersOut(person_id=person_id, model_version=loaded.version, missions=[
            OfferOut(rank=o.rank, mission_id=o.mission_id, need_type=o.need_type,
                     score=o.score, expected_payout=o.expected_payout,
                     distance_km=o.distance_km, kind=o.kind, candidate_id=o.candidate_id,
                     reasons=list(o.reasons)) for o in offers])

    return await run_in_threadpool(serve)


# ---------------------------------------------------------------------------- allocation


class AllocationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mission_ids: list[Ref] | None = Field(None, max_length=10000, description=(
        "open missions to staff (default: every open mission)"))
    candidates_per_mission: Int = Field(30, ge=1, le=200)
    newcomer_floor: float = Field(0.2, ge=0, le=1, strict=True, allow_inf_nan=False,
                                  description="least share of person-seats for newcomers")
    value: Literal["p_success", "expected_payout"] = "p_success"
    time_limit: float = Field(10.0, gt=0, le=120, strict=True, allow_inf_nan=False,
                              description="seconds allowed to each solver call")


class AllocatedOut(BaseModel):
    kind: Literal["person", "group"]
    candidate_id: str
    members: list[str]
    p_success: float | None
    expected_payout: float | None
    newcomer: bool


class AllocationOut(BaseModel):
    as_of: str
    store_version: int
    model_version: str
    value: str
    newcomer_floor: float
    candidates_per_mission: int
    missions_open: int
    missions_staffed: int
    missions_without_candidates: list[str]
    unstaffed_by_floor: list[str]
    objective: float | None
    objective_without_floor: float | None
    price_of_floor: float | None
    seats: int
    newcomer_seats: int
    newcomer_share: float | None
    newcomer_share_without_floor: float | None
    status: str
    mip_gap: float | None
    solves: int
    floor_solve: str
    seconds: dict[str, float | None]
    assignments: dict[str, list[AllocatedOut]]


@router.post("/allocations", response_model=AllocationOut)
async def allocations(body: AllocationRequest, request: Request,
                      _: Engineer) -> AllocationOut:
    """Staff every open mission at once (or those given): nobody beyond capacity, a floor on
    the newcomers' share of seats, and what that floor costs. Nothing is written."""

    def serve() -> AllocationOut:
        engine, loaded = engine_for(request)
        ids = None if body.mission_ids is None else list(dict.fromkeys(body.mission_ids))
        run = allocate_open_missions(
            engine, ids, candidates_per_mission=body.candidates_per_mission,
            newcomer_floor=body.newcomer_floor, value=body.value, time_limit=body.time_limit)
        report = allocation_report_json(run)
        report["model_version"] = loaded.version
        return AllocationOut(**report)

    return await run_in_threadpool(serve)


# ------------------------------------------------------------------------------- model


class ReloadOut(BaseModel):
    swapped: bool = Field(description="a new model serves from now on")
    model_version: str | None
    previous_version: str | None
    error: str | None = Field(description="why the new model was refused (the old one serves)")


@router.post("/model/reload", response_model=ReloadOut)
async def reload_model(request: Request, _: DataOfficer) -> ReloadOut:
    """Check the registry for a new champion now; swap it in if it loads and passes the
    smoke check, else keep serving the current model. Acts on this worker (the others pick
    it up at their next poll)."""
    provider: EngineProvider = request.app.state.provider
    before = provider.model.version if provider.ready else None
    swapped = await run_in_threadpool(provider.load)
    return ReloadOut(swapped=swapped, model_version=provider.model.version if provider.ready
                     else None, previous_version=before,
                     error=None if swapped else provider.last_error)
